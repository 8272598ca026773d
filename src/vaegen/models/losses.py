"""The VAE objective (reconstruction + beta * KL, each a sum per image averaged over the batch) and the GAN losses
that the GAN family and the VAE-GAN's discriminator share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F


class LossTerms(NamedTuple):
    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Summed over pixels, averaged over the batch; the decoder emits logits."""
    if kind == "mse":
        per_batch = F.mse_loss(torch.sigmoid(logits), target, reduction="sum")
    elif kind == "bce":
        # from logits: numerically stable where sigmoid saturates
        per_batch = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    elif kind == "gaussian":
        per_batch = calibrated_gaussian_nll(torch.sigmoid(logits), target)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; use 'mse', 'bce' or 'gaussian'")
    return per_batch / target.shape[0]


def calibrated_gaussian_nll(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """σ-VAE (Rybkin et al. 2021): the negative log-likelihood of N(mean, σ² I) with the σ that
    maximises it for this batch, σ² = the batch's mean squared error. MSE with a fixed weight
    assumes σ; calibrating it lets the likelihood itself set the recon/KL balance that β is
    otherwise hand-tuned for. Summed over the batch; log σ is kept above -6 as in the paper."""
    squared = (mean - target).pow(2)
    log_sigma = (0.5 * squared.mean().log()).clamp(min=-6.0)
    return (squared * torch.exp(-2.0 * log_sigma) / 2.0 + log_sigma + 0.5 * math.log(2.0 * math.pi)).sum()


@dataclass(frozen=True)
class DecoderLikelihood:
    """The density p(x | z) that a decoder's logits define for images x in [0, 1]: what a likelihood bound assumes.

    bernoulli: every pixel value a Bernoulli probability, log p = x log m + (1 - x) log(1 - m), m = sigmoid(logits),
    the log-likelihood `bce` minimises; for grey levels between 0 and 1 it is not a normalised density.
    gaussian: N(sigmoid(logits), σ² I), a continuous density on R^D, not discretised to 8-bit values."""

    distribution: Literal["bernoulli", "gaussian"]
    sigma: float | None = None  # gaussian only
    note: str = ""

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per image, summed over its pixels: logits [..., C, H, W] (leading dimensions broadcast with x)."""
        logits, x = logits.float(), x.float()
        if self.distribution == "bernoulli":
            per_pixel = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        else:
            log_sigma = math.log(self.sigma)
            per_pixel = -((torch.sigmoid(logits) - x) / self.sigma).pow(2) / 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(-3).sum(-1)

    def describe(self) -> dict:
        """The block metrics.json states the bound's assumption in."""
        block = {"distribution": self.distribution, "mean": "sigmoid(decoder logits)", "discretised": False}
        if self.sigma is not None:
            block["sigma"] = self.sigma
        return {**block, "note": self.note}


MSE_SIGMA = math.sqrt(0.5)  # the sum of squared errors is -log N(x; mean, ½ I) - D/2·log π


def standard_normal_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent value, unreduced: the caller sums or averages it."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) || N(0, I)), summed over latent dimensions, averaged over the batch."""
    return standard_normal_kl(mu, logvar).sum() / mu.shape[0]


def vae_loss(
    logits: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float, kind: str
) -> LossTerms:
    recon = reconstruction_loss(logits, target, kind)
    kl = kl_divergence(mu, logvar)
    return LossTerms(recon + beta * kl, recon, kl)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The discriminator's (a WGAN's critic's) loss on a batch's logits: non_saturating (Goodfellow et al. 2014), lsgan
    (Mao et al. 2017), hinge (Lim & Ye 2017), or wgan_gp's E[D(fake)] - E[D(real)] (its gradient penalty added apart)."""
    if kind == "wgan_gp":
        return fake_logits.mean() - real_logits.mean()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    if kind == "lsgan":
        return 0.5 * ((real_logits - 1.0).pow(2).mean() + fake_logits.pow(2).mean())
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's loss on the discriminator's logits of its images (non_saturating: -log D(G(z)))."""
    if kind in ("hinge", "wgan_gp"):
        return -fake_logits.mean()
    if kind == "lsgan":
        return 0.5 * (fake_logits - 1.0).pow(2).mean()
    return F.softplus(-fake_logits).mean()
