"""The convolutional VAE (and its conditional variant) and the name -> model registry.

`ConvVAE` with the default widths is the reference architecture: four stride-2
convolutions down, a linear bottleneck, four stride-2 transposed convolutions up. The one
difference: layers followed by BatchNorm have no bias of their own (BatchNorm's shift
replaces it, so the function class is the same and the count is 1,344 parameters lower at
the default widths). Every
size is derived from the image size and the widths, so any size divisible by
2**len(widths) works, square or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vaegen.config import ModelConfig

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def add(builder):
        MODELS[name] = builder
        return builder

    return add


def build_model(cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int) -> nn.Module:
    return MODELS[cfg.name](cfg, image_size=image_size, channels=channels, num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _down(in_ch: int, out_ch: int, norm: bool) -> nn.Sequential:
    # no bias before BatchNorm: its shift makes the bias redundant, and the bias's gradient is
    # then pure rounding noise that Adam amplifies, which would break bit-exact resume
    layers = [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _up(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


@register_model("conv_vae")
class ConvVAE(nn.Module):
    """Images in [0, 1], shape [N, C, H, W]. `forward` returns decoder logits, mu and log-variance.

    Conditioning (`conditional`):
      - "onehot": the one-hot label enters the encoder as extra constant input planes and is
        concatenated with z before the decoder's linear layer (the reference CVAE);
      - "embedding": a learned per-class vector is added to z before decoding.
    """

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int = 1):
        super().__init__()
        self.image_size = tuple(image_size)
        self.channels = channels
        self.latent_dim = cfg.latent_dim
        self.conditional = cfg.conditional
        self.num_classes = num_classes
        widths = list(cfg.widths)
        factor = 2 ** len(widths)
        height, width = self.image_size
        if height % factor or width % factor:
            raise ValueError(f"image size {self.image_size} is not divisible by {factor}")
        self.bottleneck_shape = (widths[-1], height // factor, width // factor)
        flat = widths[-1] * (height // factor) * (width // factor)

        label_planes = num_classes if cfg.conditional == "onehot" else 0
        in_widths = [channels + label_planes] + widths[:-1]
        self.encoder = nn.Sequential(*self._encoder_stages(in_widths, widths, cfg), nn.Flatten())
        self.to_mu = nn.Linear(flat, cfg.latent_dim)
        self.to_logvar = nn.Linear(flat, cfg.latent_dim)

        self.label_embedding = nn.Embedding(num_classes, cfg.latent_dim) if cfg.conditional == "embedding" else None
        self.from_latent = nn.Linear(cfg.latent_dim + label_planes, flat)
        reversed_widths = widths[::-1]
        self.decoder = nn.Sequential(
            *self._decoder_stages(reversed_widths, cfg),
            nn.ConvTranspose2d(widths[0], channels, 4, stride=2, padding=1),
        )

    def _encoder_stages(self, in_widths: list[int], widths: list[int], cfg: ModelConfig) -> list[nn.Module]:
        return [_down(i, o, norm=index > 0) for index, (i, o) in enumerate(zip(in_widths, widths))]

    def _decoder_stages(self, reversed_widths: list[int], cfg: ModelConfig) -> list[nn.Module]:
        return [_up(i, o) for i, o in zip(reversed_widths[:-1], reversed_widths[1:])]

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the layer that produces the images (the adaptive adversarial weight is measured there)."""
        return self.decoder[-1].weight

    @property
    def is_conditional(self) -> bool:
        return self.conditional != "none"

    def _check_labels(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.is_conditional:
            return None
        if labels is None:
            raise ValueError(
                f"this model is conditional on {self.num_classes} classes; pass labels (class indices, or names with vaegen.load)"
            )
        labels = torch.as_tensor(self.class_indices(labels), device=self.to_mu.weight.device).long().reshape(-1)
        if labels.numel() == 1 and batch > 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"got {labels.numel()} labels for a batch of {batch}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}]")
        return labels

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z | x)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, *self.image_size):
            height, width = self.image_size
            raise ValueError(
                f"this model takes images of shape [N, {self.channels}, {height}, {width}] in [0, 1]; got {list(x.shape)}; "
                f"resize them to {height}x{width} first"
            )
        labels = self._check_labels(labels, x.shape[0])
        if self.conditional == "onehot":
            planes = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)
        features = self.encoder(x)
        return self.to_mu(features), self.to_logvar(features)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"this model decodes latent codes of shape [N, {self.latent_dim}]; got {list(z.shape)}")
        labels = self._check_labels(labels, z.shape[0])
        if self.conditional == "onehot":
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        elif self.conditional == "embedding":
            z = z + self.label_embedding(labels)
        hidden = self.from_latent(z).view(z.shape[0], *self.bottleneck_shape)
        return self.decoder(hidden)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z, labels))

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, labels)
        if generator is None:  # randn_like keeps the batch dimension symbolic under torch.compile
            noise = torch.randn_like(mu)
        else:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + noise * torch.exp(0.5 * logvar)
        return self.decode_logits(z, labels), mu, logvar

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | list[int] | int | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> torch.Tensor:
        """`n` images in [0, 1]; same seed, same images. Codes come from `self.latent_density` (a fitted
        `vaegen.density.LatentGMM`, set by `vaegen.load` when the checkpoint has one), else z ~ N(0, T² I).
        `labels` (conditional models only): one class or one per image, as indices or `self.classes` names."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n is the number of images to draw, a whole number >= 0; got {n!r}")
        if not (math.isfinite(temperature) and temperature >= 0):  # 0: every code at its mean
            raise ValueError(f"temperature scales the spread of the latent codes and must be a number >= 0; got {temperature!r}")
        if labels is not None and not self.is_conditional:
            raise ValueError(f"this model is not conditional, so it takes no labels (got labels={labels!r}); leave labels out")
        labels = self._check_labels(labels, n)  # conditional: one label per image, names or indices
        device = self.to_mu.weight.device
        generator = torch.Generator(device="cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        from vaegen.density import latent_codes

        density = getattr(self, "latent_density", None)
        density = density.to(device) if density is not None else None
        return self.decode(latent_codes(n, self.latent_dim, generator, labels, temperature, density).to(device), labels)

    def class_indices(self, labels):
        """Class names (`self.classes`, set by `vaegen.load`) to indices; indices pass through."""
        names = [labels] if isinstance(labels, str) else labels
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(name, str) for name in names):
            return labels
        classes = list(getattr(self, "classes", None) or [])
        unknown = [name for name in names if name not in classes]
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))} is not a class of this model ({', '.join(classes) or 'no class names loaded'})")
        indices = [classes.index(name) for name in names]
        return indices[0] if isinstance(labels, str) else indices

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: the model's deterministic reconstruction of `x`."""
        mu, _ = self.encode(x, labels)
        return self.decode(mu, labels)


class ResidualBlock(nn.Module):
    """x + f(x), f = a pre-activation bottleneck (VDVAE, Child 2021): 1x1 down to a quarter of the
    width, two 3x3 convolutions there, 1x1 back up. A tenth of the compute of two full-width 3x3
    convolutions, so depth is affordable at every scale. The last convolution starts at zero, so a
    new block is the identity and a deep stack trains like the shallow network it extends."""

    def __init__(self, width: int):
        super().__init__()
        hidden = max(1, width // 4)

        def layer(i: int, o: int, k: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(i), nn.ReLU(), nn.Conv2d(i, o, k, padding=k // 2, bias=False)]

        self.body = nn.Sequential(*layer(width, hidden, 1), *layer(hidden, hidden, 3), *layer(hidden, hidden, 3), *layer(hidden, width, 1))
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register_model("res_vae")
class ResVAE(ConvVAE):
    """ConvVAE with `model.blocks` residual blocks after every change of resolution: more depth
    (capacity) at each scale for the same bottleneck, conditioning and interface."""

    def _encoder_stages(self, in_widths: list[int], widths: list[int], cfg: ModelConfig) -> list[nn.Module]:
        stages = []
        for stage in super()._encoder_stages(in_widths, widths, cfg):
            width = stage[0].out_channels
            stages += [stage, *(ResidualBlock(width) for _ in range(cfg.blocks))]
        return stages

    def _decoder_stages(self, reversed_widths: list[int], cfg: ModelConfig) -> list[nn.Module]:
        stages = [*(ResidualBlock(reversed_widths[0]) for _ in range(cfg.blocks))]
        for stage in super()._decoder_stages(reversed_widths, cfg):
            width = stage[0].out_channels
            stages += [stage, *(ResidualBlock(width) for _ in range(cfg.blocks))]
        return stages
