"""The validation terms of a model on held-out images: what every epoch logs as val_* and `vaegen test` reports."""

from __future__ import annotations

import torch

from vaegen.config import Config
from vaegen.data.dataset import DecodedImages, batches, to_input
from vaegen.models import Family


def validation_terms(model: torch.nn.Module, family: Family, data: DecodedImages, config: Config, beta: float, device: torch.device) -> dict:
    """The validation terms (val_*) with fixed noise: comparable across epochs, and it never touches the training
    RNG. Nothing (an empty dict) without validation images (data.val_fraction: 0)."""
    if len(data.images) == 0:
        return {}
    model.eval()
    noise = torch.Generator(device=device).manual_seed(config.train.seed + 1)
    sums: dict[str, torch.Tensor] = {}
    for images_u8, labels in batches(data, config.train.batch_size):
        x = to_input(images_u8, device)
        y = labels.to(device) if model.is_conditional else None
        for name, value in family.validation_terms(model, x, y, noise, beta, config.loss).items():
            sums[name] = sums.get(name, 0.0) + value * len(x)
    means = (torch.stack(list(sums.values())) / len(data.images)).tolist()
    return {f"val_{name}": value for name, value in zip(sums, means)}
