"""An optional perceptual reconstruction term: the distance between a frozen ImageNet network's
pooled features of the image and of its reconstruction, which penalises lost texture that pixel
losses forgive.

Never the network that computes the reported Fréchet distance: a model trained to match those
features would improve the metric without improving the images. `Config` and `train` refuse it.
"""

from __future__ import annotations

import torch
from torch import nn


class PerceptualLoss(nn.Module):
    def __init__(self, backbone_name: str, weight: float, device: torch.device):
        super().__init__()
        from vaegen.evaluation.backbones import load_backbone

        self.backbone = load_backbone(backbone_name, device)
        self.backbone.requires_grad_(False)
        self.weight = weight

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """weight × squared feature distance per image, averaged over the batch."""
        both = torch.cat([reconstruction, target]).float()
        if both.shape[1] == 1:
            both = both.expand(-1, 3, -1, -1)
        # Backbone.forward runs without gradients (it is a metric); features() is the same network with them
        fake, real = self.backbone.features(both).float().chunk(2)
        return self.weight * (fake - real.detach()).pow(2).sum(1).mean()
