"""VAE-GAN refinement: a patch discriminator rewards texture that looks real where a likelihood rewards the blurry
mean; its term is weighted adaptively as in VQGAN (Esser et al. 2021) and starts after a warm-up."""

from __future__ import annotations

import torch
from torch import nn

from vaegen.config import AdversarialConfig
from vaegen.models.losses import discriminator_loss, generator_loss


class PatchDiscriminator(nn.Module):
    """Strided 4x4 convolutions down to a map of real/fake logits, one per overlapping patch."""

    def __init__(self, channels: int, widths: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for index, (in_ch, width) in enumerate(zip((channels, *widths), widths)):
            layers.append(nn.Conv2d(in_ch, width, 4, stride=2, padding=1, bias=index == 0))
            if index > 0:
                layers.append(nn.GroupNorm(min(32, width // 4) or 1, width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        layers.append(nn.Conv2d(widths[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0)  # images in [0, 1], the network sees [-1, 1]


class Adversary:
    """The discriminator, its optimizer and its running statistics, used by the training step."""

    def __init__(self, cfg: AdversarialConfig, channels: int, device: torch.device):
        self.cfg = cfg
        self.discriminator = PatchDiscriminator(channels, cfg.widths).to(device)
        # β1 = 0.5 is the usual GAN setting: less momentum keeps the two players from oscillating
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        self.sums = torch.zeros(3, device=device)  # generator loss, discriminator loss, adaptive weight
        self.steps = 0

    def generator_term(self, fake: torch.Tensor, recon: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
        """cfg.weight · λ · L_G, λ = ‖∇L_rec‖ / ‖∇L_G‖ at the decoder's last layer (no gradient through λ)."""
        self.discriminator.requires_grad_(False)  # the decoder's step must not train the discriminator
        loss = generator_loss(self.discriminator(fake), self.cfg.loss)
        self.discriminator.requires_grad_(True)
        recon_grad = torch.autograd.grad(recon, last_layer, retain_graph=True)[0]
        adv_grad = torch.autograd.grad(loss, last_layer, retain_graph=True)[0]
        adaptive = (recon_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(max=1e4).detach()
        self.sums += torch.stack([loss.detach(), torch.zeros_like(loss), adaptive])
        return self.cfg.weight * adaptive * loss

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        loss = discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()), self.cfg.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.sums[1] += loss.detach()
        self.steps += 1

    def epoch_stats(self) -> dict[str, float]:
        """Means since the last call (one host read per epoch); empty before the warm-up ends."""
        if self.steps == 0:
            return {}
        g, d, weight = (self.sums / self.steps).tolist()
        self.sums.zero_()
        self.steps = 0
        return {"train_adv_g": g, "train_adv_d": d, "adv_weight": weight}

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
