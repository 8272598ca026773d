"""Where latent codes come from when a model generates: `sampler(n, generator) -> images`.

Samplers take their randomness from the generator they are given, never the global RNG,
so evaluating a model during training leaves the training random stream untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Sampler = Callable[[int, torch.Generator], torch.Tensor]


def prior_sampler(model: torch.nn.Module, temperature: float = 1.0, class_weights: torch.Tensor | None = None) -> Sampler:
    """z ~ N(0, temperature² I); conditional models draw labels with `class_weights` (default uniform)."""
    device = next(model.parameters()).device
    if model.is_conditional and class_weights is None:
        class_weights = torch.ones(model.num_classes)

    @torch.no_grad()
    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, model.latent_dim, generator=generator) * temperature
        labels = None
        if model.is_conditional:
            labels = torch.multinomial(class_weights.float(), n, replacement=True, generator=generator).to(device)
        return model.decode(z.to(device), labels)

    return sample
