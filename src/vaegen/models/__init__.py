"""The models, one module per family (vae, hvae, autoencoder, vqvae, vq_prior, gan, flow, diffusion), and the registry
that names them for `model.name`.

A family's module defines its networks and its `Family` (vaegen.models.family: the loss terms the training loop
minimises, what the epoch line shows, whether it has a prior) and registers them with `register_model`.
"""

from vaegen.models import autoencoder, diffusion, flow, gan, hvae, vae, vq_prior, vqvae  # noqa: F401  (they register their models)
from vaegen.models.family import Family, reconstructs
from vaegen.models.registry import (
    FAMILIES, MODELS, build_model, count_parameters, family_of, register_model, resolved_and_checked,
)

__all__ = ["FAMILIES", "MODELS", "Family", "build_model", "count_parameters", "family_of", "reconstructs", "register_model",
           "resolved_and_checked"]
