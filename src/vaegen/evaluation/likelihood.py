"""The test split's negative log-likelihood under a family's likelihood bounds: the importance-weighted bound
(IWAE, Burda et al. 2016) with K samples and the ELBO, in nats per image and in bits per dimension; and, for a family
with an exact density (a flow), the exact NLL of the uniformly dequantized test images.

The family supplies its decoder density and the log importance weights log p(x, z | y) - log q(z | x, y) (vaegen.models
.family); this module draws nothing itself and knows no family. Both bounds come from the same K draws, so the IWAE
bound's NLL never exceeds the ELBO's (Jensen), and K = 1 makes them equal.
"""

from __future__ import annotations

import math

import torch

from vaegen.config import LossConfig, TestConfig
from vaegen.data.dataset import DecodedImages, batches, to_input
from vaegen.evaluation.frechet import eval_batch_size
from vaegen.models import Family


def importance_weighted_bounds(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From log weights [K, N], per image: the IWAE bound log (1/K) Σ_k w_k (a stable logsumexp) and the ELBO
    estimate (1/K) Σ_k log w_k, both lower bounds on log p(x) (in expectation), IWAE ≥ ELBO for every draw."""
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights, dim=0) - math.log(k), log_weights.mean(dim=0)


def bits_per_dim(nats: float, dims: int) -> float:
    """Nats per image as bits per pixel value: nats / (ln 2 · C·H·W)."""
    return nats / (math.log(2.0) * dims)


def _pairs(data: DecodedImages, batch_size: int, conditional: bool, device: torch.device):
    for images_u8, labels in batches(data, batch_size):
        yield to_input(images_u8, device), labels.to(device) if conditional else None


@torch.no_grad()
def likelihood_metrics(
    model: torch.nn.Module, family: Family, data: DecodedImages, train: DecodedImages, loss: LossConfig, cfg: TestConfig,
    device: torch.device,
) -> dict:
    """nll_iwae_* and nll_elbo_* (nats per image, bits/dim) on `data` with cfg.likelihood.samples draws per image, and
    the `likelihood` block that states the decoder density they assume; empty when the family has no likelihood,
    likelihood.samples is 0 or `data` has no images. Deterministic given cfg.seed."""
    k = cfg.likelihood.samples
    if k == 0 or len(data.images) == 0:
        return {}
    model.eval()
    batch_size = eval_batch_size(cfg.batch_size, device)
    fit_noise = torch.Generator(device=device).manual_seed(cfg.seed)
    decoder = family.decoder_likelihood(model, _pairs(train, batch_size, model.is_conditional, device), loss, fit_noise)
    if decoder is None:
        return {}
    noise = torch.Generator(device=device).manual_seed(cfg.seed)
    iwae = torch.zeros((), dtype=torch.float64, device=device)
    elbo = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in _pairs(data, batch_size, model.is_conditional, device):
        bound, estimate = importance_weighted_bounds(family.log_weights(model, x, y, k, noise, decoder, batch_size))
        iwae += bound.double().sum()
        elbo += estimate.double().sum()
    n, dims = len(data.images), math.prod(data.images.shape[1:])
    nll_iwae, nll_elbo = -float(iwae) / n, -float(elbo) / n
    block = {**decoder.describe(), "samples": k, "num_images": n, "dims": dims, "split": cfg.split,
             "conditional": bool(model.is_conditional)}
    return {"nll_iwae_nats": nll_iwae, "nll_iwae_bits_per_dim": bits_per_dim(nll_iwae, dims),
            "nll_elbo_nats": nll_elbo, "nll_elbo_bits_per_dim": bits_per_dim(nll_elbo, dims), "likelihood": block}


@torch.no_grad()
def exact_likelihood_metrics(model: torch.nn.Module, family: Family, data: DecodedImages, cfg: TestConfig, device: torch.device) -> dict:
    """nll_dequantized_nats and nll_dequantized_bits_per_dim on `data` for a family with an exact density (its
    `exact_log_likelihood`), one uniform dequantization draw per image from cfg.seed, and the `dequantized_likelihood`
    block that says what they are; empty for other families or without images. Exact for the dequantized images; its
    expectation over the noise is an upper bound on the NLL of the discrete 8-bit images (Jensen)."""
    if len(data.images) == 0:
        return {}
    model.eval()
    noise = torch.Generator(device=device).manual_seed(cfg.seed)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in _pairs(data, eval_batch_size(cfg.batch_size, device), model.is_conditional, device):
        log_p = family.exact_log_likelihood(model, x, y, noise)
        if log_p is None:
            return {}
        total += log_p.double().sum()
    n, dims = len(data.images), math.prod(data.images.shape[1:])
    nll = -float(total) / n
    block = {"kind": "exact density of the dequantized images", "dequantization": "uniform, one draw per image",
             "bound": "an upper bound on the discrete 8-bit NLL (in expectation over the noise)", "seed": cfg.seed,
             "num_images": n, "dims": dims, "split": cfg.split}
    return {"nll_dequantized_nats": nll, "nll_dequantized_bits_per_dim": bits_per_dim(nll, dims), "dequantized_likelihood": block}
