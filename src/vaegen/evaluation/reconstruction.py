"""How close a model's reconstructions are to held-out images, in the field's image-quality numbers: SSIM, MS-SSIM
(where the images are large enough for its five scales) and PSNR, torchmetrics' implementations."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure, StructuralSimilarityIndexMeasure

from vaegen.data.dataset import DecodedImages, batches, to_input
from vaegen.evaluation.frechet import LOCAL_ONLY

PSNR_CAP_DB = 100.0  # a mean squared error of 1e-10
SSIM_MIN_SIDE = 11  # its 11-pixel Gaussian window
MS_SSIM_MIN_SIDE = 176  # torchmetrics' five scales of an 11-pixel window: each side // 16 must exceed 10


@torch.no_grad()
def reconstruction_quality(model: torch.nn.Module, data: DecodedImages, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean SSIM (from 11 px), MS-SSIM (from 176 px) and PSNR (dB, per image, at most 100) of `model.reconstruct` on
    every image of `data`, in [0, 1] pixels; empty when `data` has no images."""
    if len(data.images) == 0:
        return {}
    model.eval()
    metrics = {}
    if min(data.images.shape[-2:]) >= SSIM_MIN_SIDE:
        metrics["ssim"] = StructuralSimilarityIndexMeasure(data_range=1.0, **LOCAL_ONLY)
    if min(data.images.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        metrics["ms_ssim"] = MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0, **LOCAL_ONLY)
    metrics = {name: metric.to(device) for name, metric in metrics.items()}
    psnr_sum = torch.zeros((), dtype=torch.float64, device=device)
    for images_u8, labels in batches(data, batch_size):
        x = to_input(images_u8, device)
        y = labels.to(device) if model.is_conditional else None
        reconstructed = model.reconstruct(x, y).float().clamp(0, 1)
        for metric in metrics.values():
            metric.update(reconstructed, x)
        per_image = peak_signal_noise_ratio(reconstructed, x, data_range=1.0, dim=(1, 2, 3), reduction="none")
        # an exact copy (a blank image) has infinite PSNR: capped, or one image would make the mean infinite
        psnr_sum += per_image.clamp(max=PSNR_CAP_DB).sum()
    return {**{name: float(metric.compute()) for name, metric in metrics.items()}, "psnr": float(psnr_sum) / len(data.images)}
