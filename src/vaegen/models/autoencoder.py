"""The deterministic autoencoder: ConvVAE's encoder and decoder with a plain code, trained as an RAE
(Ghosh et al. 2020) and sampled through the latent mixture fitted after training."""

from __future__ import annotations

import torch

from vaegen.config import Config, ModelConfig
from vaegen.models.family import Family, require_the_mixture_sampler
from vaegen.models.losses import reconstruction_loss
from vaegen.models.registry import register_model
from vaegen.models.vae import ConvVAE, ResVAE


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
        require_the_mixture_sampler(config, "an autoencoder", "the training images' codes")

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


@register_model("conv_ae", family=Autoencoder())
class ConvAE(ConvVAE):
    """ConvVAE's encoder and decoder as a deterministic autoencoder: the code is the encoder's output (no log-variance
    head, no noise). Trained as an RAE (vaegen.models.family.Autoencoder); its samples come from a latent mixture."""

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int = 1):
        super().__init__(cfg, image_size, channels, num_classes)
        del self.to_logvar

    def _encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        """The code, and no spread: (z, None)."""
        return self.to_mu(self._features(x, labels)), None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """Decoder logits and the code z."""
        labels = self._check_labels(labels, x.shape[0], check_range=False)
        z, _ = self._encode(x, labels)
        return self._decode_logits(z, labels), z

    def generate(self, n: int, generator: torch.Generator, temperature: float = 1.0, class_weights: torch.Tensor | None = None):
        raise ValueError("an autoencoder has no prior to sample from: its samples come from the latent mixture fitted on the training "
                         "images' codes, which vaegen.load's sample() uses (sampler.name: gmm); or decode codes")


@register_model("res_ae", family=Autoencoder())
class ResAE(ConvAE, ResVAE):
    """ResVAE's residual encoder and decoder as a deterministic autoencoder (ConvAE's code, ResVAE's stages)."""
