"""Model families: what one kind of generative model gives the training loop, the evaluation and `vaegen.load`.

The loop owns what every family shares: data, batches, precision, compile and CUDA-graph capture, DDP,
the optimizer step, gradient clipping, EMA, the adversarial head, the perceptual term, checkpoints, resume,
evaluation and best-model export. A family supplies the rest, through two things:

- its module (built from `model.*` by the model registry, `vaegen.models`), whose `forward(x, labels)` is
  the training forward pass and which draws images after training:
  `generate(n, generator, temperature, class_weights)` (images in [0, 1], randomness from `generator` only),
  and the attributes `is_conditional` and `num_classes`. Latent families also have `latent_dim`,
  `encode`, `decode` and `reconstruct`, which the latent mixture, the reconstruction pictures and the
  gallery's interpolation use; `last_layer` lets the adversarial head weigh its term.
- a `Family` object: the named loss terms of a batch from the module's outputs (on the device, no host
  sync), the validation terms, which terms the epoch line shows, and whether samples can come from a prior.

A family is registered with its modules (`vaegen.models.register_model(name, family)`); no code outside its
module asks which family it is.
"""

from __future__ import annotations

import torch
from torch import nn

from vaegen.config import Config, LossConfig
from vaegen.errors import ConfigError
from vaegen.losses import kl_divergence, reconstruction_loss


class Family:
    """The training and evaluation behaviour of a kind of model; subclasses override what differs."""

    name = "family"
    terms: tuple[str, ...] = ("loss",)  # training_terms' names, in its order: the objective first
    # what the epoch line shows of the training and validation terms, as {term: label}
    headline: dict[str, str] = {}
    val_headline: dict[str, str] = {}
    has_prior = True  # samples can come from module.generate; else only from a fitted latent mixture

    def check(self, config: Config) -> None:
        """Refuse (ConfigError) settings this family cannot train with; called before anything is built."""

    def training_terms(self, outputs, x: torch.Tensor, beta: float | torch.Tensor, loss: LossConfig) -> dict[str, torch.Tensor]:
        """Named loss terms of a batch, per image averaged over it; "loss", the first, is the objective."""
        raise NotImplementedError

    def images(self, outputs) -> torch.Tensor:
        """The images in [0, 1] that the forward pass produced (for the perceptual term and the adversarial head)."""
        raise NotImplementedError(f"the {self.name} family makes no images in its forward pass")

    @torch.no_grad()
    def validation_terms(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator, beta: float, loss: LossConfig
    ) -> dict[str, torch.Tensor]:
        """The terms of a held-out batch, per image averaged over it, with noise from `generator` only."""
        return self.training_terms(model(x, y), x, beta, loss)


class VAE(Family):
    """Variational autoencoders: reconstruction + β·KL. Outputs: (decoder logits, μ, log σ²)."""

    name = "vae"
    terms = ("loss", "recon", "kl", "nelbo")
    headline = {"recon": "recon", "kl": "KL"}
    val_headline = {"nelbo": "recon + KL"}

    def training_terms(self, outputs, x, beta, loss):
        logits, mu, logvar = outputs
        recon = reconstruction_loss(logits.float(), x, loss.recon)
        kl = kl_divergence(mu.float(), logvar.float())
        # nelbo = recon + KL, the bound at β = 1: unlike the objective it compares epochs whatever the β schedule
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl}

    def images(self, outputs):
        return torch.sigmoid(outputs[0].float())

    @torch.no_grad()
    def validation_terms(self, model, x, y, generator, beta, loss):
        """val_mse (squared error of the posterior-mean reconstruction) compares runs whatever their loss."""
        logits, mu, logvar = model(x, y, generator=generator)
        terms = self.training_terms((logits, mu, logvar), x, beta, loss)
        squared_error = (model.decode(mu, y) - x).pow(2).sum() / len(x)
        return {**terms, "mse": squared_error}


class Autoencoder(Family):
    """Deterministic autoencoders, regularised as RAEs (Ghosh et al. 2020): reconstruction + β·½‖z‖², where β
    follows the config's β schedule (0: a plain autoencoder). They have no prior: samples come from the latent
    mixture fitted on the training images' codes (sampler.name: gmm). Outputs: (decoder logits, z)."""

    name = "ae"
    terms = ("loss", "recon", "latent_l2")
    headline = {"recon": "recon", "latent_l2": "½‖z‖²"}
    val_headline = {"recon": "recon"}
    has_prior = False

    def check(self, config: Config) -> None:
        if config.sampler.name != "gmm":
            raise ConfigError(
                f"model.name {config.model.name} is an autoencoder: it has no prior to sample from, so its samples come "
                f"from a mixture fitted on the training images' codes; set sampler.name: gmm."
            )

    def training_terms(self, outputs, x, beta, loss):
        logits, z = outputs
        recon = reconstruction_loss(logits.float(), x, loss.recon)
        latent_l2 = 0.5 * z.float().pow(2).sum() / len(z)
        return {"loss": recon + beta * latent_l2, "recon": recon, "latent_l2": latent_l2}

    def images(self, outputs):
        return torch.sigmoid(outputs[0].float())

    @torch.no_grad()
    def validation_terms(self, model, x, y, generator, beta, loss):
        logits, z = model(x, y)
        terms = self.training_terms((logits, z), x, beta, loss)
        squared_error = (torch.sigmoid(logits.float()) - x).pow(2).sum() / len(x)
        return {**terms, "mse": squared_error}


def reconstructs(model: nn.Module) -> bool:
    """Whether a module encodes and decodes (a latent family's): the mixture sampler, reconstruction pictures and
    interpolations need it."""
    return all(callable(getattr(model, name, None)) for name in ("encode", "decode", "reconstruct"))
