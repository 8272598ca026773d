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
        from vaegen.backbones import load_backbone

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


def evaluation_network_problem(perceptual: str, eval_backbone: str | None, extra_backbones: tuple[str, ...] = ()) -> str | None:
    """What is wrong with training on `perceptual` while `eval_backbone` (resolved, or "auto" before it is) and
    `extra_backbones` score the run; None when nothing is."""
    from vaegen.backbones import network_of

    if perceptual == "none" or eval_backbone in (None, "none"):
        return None
    for setting, backbone in [("eval.backbone", eval_backbone), *(("eval.extra_backbones", b) for b in extra_backbones)]:
        if backbone != "auto" and network_of(backbone) == network_of(perceptual):
            return (
                f"loss.perceptual uses {perceptual}, which is also the network that computes a reported Fréchet "
                f"distance ({setting} {'resolves to' if setting == 'eval.backbone' else 'lists'} {backbone}). Training "
                f"against the evaluation network improves the number, not the images. Use another perceptual network, "
                f"or score on other networks, or loss.perceptual: none"
            )
    if not extra_backbones:
        return (
            f"loss.perceptual uses {perceptual}, and a loss on one ImageNet network can move distances measured on "
            f"another (their features overlap), so such a run is reported on a second network too: set "
            f"eval.extra_backbones: [dinov2] (self-supervised, no ImageNet labels), or loss.perceptual: none"
        )
    return None
