"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017): a normalizing flow, an invertible map from images to Gaussian noise
whose log-determinant gives the exact log-density of every image, trained by maximum likelihood.

The data: 8-bit images, x = k / 255 with k in {0, ..., 255}, are dequantized with uniform noise, y = (k + u) / 256
with u ~ U[0, 1)^D, and mapped to logit space, w = logit(α + (1 - 2α)·y) with α = 0.05, whose Jacobian joins the
flow's. The density of y on [0, 1]^D is that of the 8-bit scale [0, 256)^D times 256^D, so the negative log-likelihood
of the 8-bit data is -log p(y) + D·log 256 nats, and bits/dim = that / (D·ln 2): the number published flows report.

The flow: `model.flow_scales` scales. Each but the last: `model.flow_couplings` affine couplings with alternating
checkerboard masks, a squeeze (each 2 x 2 square of pixels becomes 4 channels at half the resolution), as many
couplings with alternating channel-wise masks, and then half of the channels leave the flow as latents (they go to
the prior N(0, I) as they are). The last scale: `model.flow_couplings` + 1 checkerboard couplings (the paper's 4 for
3), all its channels latents. A coupling keeps half of its input, x_a, and maps the other half,
x_b -> x_b·exp(s(x_a)) + t(x_a), s and t from a small ResNet (`model.flow_width`, `model.flow_blocks`) whose last
convolution starts at zero, so a new flow is the identity; s is bounded by a scaled tanh.

Written here rather than taken from a library: zuko's flows work on vectors, normflows and FrEIA have not been released
since 2023 and 2022, and torchflows' MultiscaleRealNVP masks even-width images in stripes, not a checkerboard, with a
conditioner whose width and depth cannot be set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaegen.config import Config, ModelConfig
from vaegen.errors import ConfigError
from vaegen.models.family import Family, optimizer_words
from vaegen.models.registry import register_model

ALPHA = 0.05  # the logit pre-transform keeps y away from 0 and 1, where logit(y) is infinite
LOG_SCALE_BOUND = 2.0  # |s| of one coupling at most this: a single step cannot blow a value up or squash it to zero
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def squeezes_of(scales: int) -> int:
    """Halvings of the resolution in a flow of `scales` scales (one between each two)."""
    return scales - 1


class RealNVPFamily(Family):
    """Normalizing flows: the objective `loss` is the negative log-likelihood in nats per image on the 8-bit scale
    (uniform dequantization), also shown in bits per dimension. Outputs: log p(y) of the dequantized images in nats
    per image [N], on [0, 1]^D."""

    name = "flow"
    terms = ("loss", "bits_per_dim")
    headline = {"bits_per_dim": "bits/dim"}
    val_headline = {"bits_per_dim": "bits/dim"}
    weighs_beta = False

    def describe(self, config: Config) -> dict[str, str]:
        model = config.model
        return {"model": f"{model.name}, {model.flow_scales} scales of {model.flow_couplings} couplings, width "
                         f"{model.flow_width} × {model.flow_blocks} blocks",
                "training": f"exact likelihood, {optimizer_words(config)}"}

    def halvings(self, model: ModelConfig) -> tuple[int, str]:
        times = squeezes_of(model.flow_scales)
        return times, f"the {times} squeeze(s) of model.flow_scales {model.flow_scales}"

    def check(self, config: Config) -> None:
        model = config.model
        if model.conditional != "none":
            raise ConfigError(f"model.conditional is {model.conditional}, but the realnvp flow has no class-conditional "
                              "variant; set model.conditional: none.")
        if config.sampler.name != "prior":
            raise ConfigError(f"sampler.name is {config.sampler.name}, but a flow has no posterior codes to fit a mixture "
                              "on: its samples come from its own prior; set sampler.name: prior.")
        if config.output.select not in ("fid", "val_loss"):
            raise ConfigError(f"output.select is {config.output.select}, which a flow does not report (it has no "
                              "reconstruction or KL term); select on fid or val_loss (the validation NLL).")

    def training_terms(self, outputs, x, beta, loss):
        dims = x.shape[1:].numel()
        nll = dims * math.log(256.0) - outputs.float().mean()
        return {"loss": nll, "bits_per_dim": nll / (dims * math.log(2.0))}

    @torch.no_grad()
    def validation_terms(self, model, x, y, generator, beta, loss):
        return self.training_terms(model(x, y, generator=generator), x, beta, loss)

    @torch.no_grad()
    def exact_log_likelihood(self, model, x, y, generator):
        """log p of the images dequantized with noise from `generator`, on the 8-bit scale."""
        return model(x, y, generator=generator).double() - x.shape[1:].numel() * math.log(256.0)


def checkerboard(height: int, width: int, parity: int, device: torch.device) -> torch.Tensor:
    """[1, 1, H, W]: 1 where (row + column + parity) is even, the pixels a checkerboard coupling keeps."""
    rows, columns = torch.arange(height, device=device)[:, None], torch.arange(width, device=device)[None, :]
    return ((rows + columns + parity) % 2 == 0).float()[None, None]


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, 4C, H/2, W/2]: each 2 x 2 square of pixels becomes four channels."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `squeeze`."""
    n, c, h, w = x.shape
    return x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)


def bounded(raw: torch.Tensor) -> torch.Tensor:
    """A log-scale in (-LOG_SCALE_BOUND, LOG_SCALE_BOUND), the identity near 0."""
    return LOG_SCALE_BOUND * torch.tanh(raw / LOG_SCALE_BOUND)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions at full width; no normalisation, so a flow's density never
    depends on the other images of its batch."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CouplingNet(nn.Module):
    """The scale s and shift t of a coupling from its kept half: a 3x3 convolution to `width` channels, `blocks`
    residual blocks, and a 3x3 convolution to 2·`out_channels` that starts at zero (s = t = 0: the identity)."""

    def __init__(self, in_channels: int, out_channels: int, width: int, blocks: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), *(ResidualBlock(width) for _ in range(blocks)),
                                  nn.ReLU())
        self.out = nn.Conv2d(width, 2 * out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-scale, shift) in the dtype of `kept` (float32 under autocast: the log-determinant sums thousands of them)."""
        raw, shift = self.out(self.body(kept)).to(kept.dtype).chunk(2, dim=1)
        return bounded(raw), shift


class CheckerboardCoupling(nn.Module):
    """Keeps the pixels of one checkerboard colour (`parity`) and maps the others, in every channel."""

    def __init__(self, channels: int, width: int, blocks: int, parity: int):
        super().__init__()
        self.parity = parity
        self.net = CouplingNet(channels, channels, width, blocks)

    def _affine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = checkerboard(x.shape[2], x.shape[3], self.parity, x.device)
        log_scale, shift = self.net(x * mask)
        return mask, log_scale * (1 - mask), shift * (1 - mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det ∂y/∂x| per image)."""
        mask, log_scale, shift = self._affine(x)
        y = x * mask + (1 - mask) * (x * torch.exp(log_scale) + shift)
        return y, log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        mask, log_scale, shift = self._affine(y)  # the kept pixels are the same in y as in x
        return y * mask + (1 - mask) * (y - shift) * torch.exp(-log_scale)


class ChannelCoupling(nn.Module):
    """Keeps one half of the channels (the first if `parity` is 0) and maps the other half."""

    def __init__(self, channels: int, width: int, blocks: int, parity: int):
        super().__init__()
        self.parity, self.kept = parity, channels // 2
        self.net = CouplingNet(self.kept, channels - self.kept, width, blocks)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept, mapped)."""
        first, second = x[:, : self.kept], x[:, self.kept:]
        return (first, second) if self.parity == 0 else (second, first)

    def _join(self, kept: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
        return torch.cat([kept, mapped] if self.parity == 0 else [mapped, kept], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, mapped = self._split(x)
        log_scale, shift = self.net(kept)
        return self._join(kept, mapped * torch.exp(log_scale) + shift), log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        kept, mapped = self._split(y)
        log_scale, shift = self.net(kept)
        return self._join(kept, (mapped - shift) * torch.exp(-log_scale))


class Scale(nn.Module):
    """One scale of the flow on `channels` channels: checkerboard couplings, then (unless `last`) a squeeze and
    channel-wise couplings; the caller factors out half of the result."""

    def __init__(self, channels: int, couplings: int, width: int, blocks: int, last: bool):
        super().__init__()
        self.checkerboard = nn.ModuleList(CheckerboardCoupling(channels, width, blocks, i % 2) for i in range(couplings + last))
        self.channelwise = nn.ModuleList(() if last else (ChannelCoupling(4 * channels, width, blocks, i % 2) for i in range(couplings)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(len(x))
        for coupling in self.checkerboard:
            x, part = coupling(x)
            log_det = log_det + part
        if len(self.channelwise):
            x = squeeze(x)
            for coupling in self.channelwise:
                x, part = coupling(x)
                log_det = log_det + part
        return x, log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if len(self.channelwise):
            for coupling in reversed(self.channelwise):
                y = coupling.inverse(y)
            y = unsqueeze(y)
        for coupling in reversed(self.checkerboard):
            y = coupling.inverse(y)
        return y


def logit_transform(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w = logit(α + (1 - 2α)·y) and log|det ∂w/∂y| per image."""
    p = ALPHA + (1 - 2 * ALPHA) * y
    log_det = math.log(1 - 2 * ALPHA) - torch.log(p) - torch.log1p(-p)
    return torch.log(p) - torch.log1p(-p), log_det.flatten(1).sum(1)


def inverse_logit_transform(w: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(w) - ALPHA) / (1 - 2 * ALPHA)


@register_model("realnvp", RealNVPFamily())
class RealNVP(nn.Module):
    """Images in [0, 1], [N, C, H, W] with H and W divisible by 2^(flow_scales - 1). `forward` gives the log-density of
    the dequantized images; `to_latent` / `from_latent` are the flow and its inverse on [0, 1]^D, latents flat [N, D]
    (each scale's factored-out half, the first scale's first, then the last scale's)."""

    conditional = "none"
    is_conditional = False

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int = 1):
        super().__init__()
        if cfg.conditional != "none":
            raise ValueError("the realnvp flow is unconditional: set model.conditional: none")
        self.image_size, self.channels, self.num_classes = tuple(image_size), channels, num_classes
        height, width = self.image_size
        factor = 2 ** squeezes_of(cfg.flow_scales)
        if height % factor or width % factor:
            raise ValueError(f"image size {self.image_size} is not divisible by {factor} (model.flow_scales {cfg.flow_scales})")
        self.scales, self.latent_shapes = nn.ModuleList(), []
        for index in range(cfg.flow_scales):
            last = index == cfg.flow_scales - 1
            self.scales.append(Scale(channels, cfg.flow_couplings, cfg.flow_width, cfg.flow_blocks, last))
            if not last:  # after the squeeze: 4C channels at half the resolution, half of them factored out
                channels, height, width = 2 * channels, height // 2, width // 2
            self.latent_shapes.append((channels, height, width))
        self.dims = self.channels * math.prod(self.image_size)

    def to_latent(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images y in (0, 1) -> (latents [N, D], log|det ∂z/∂y| per image), the logit pre-transform included."""
        h, log_det = logit_transform(y)
        latents = []
        for index, scale in enumerate(self.scales):
            h, part = scale(h)
            log_det = log_det + part
            if index < len(self.scales) - 1:  # half of the channels go to the prior as they are
                z, h = h.chunk(2, dim=1)
                latents.append(z.flatten(1))
        return torch.cat([*latents, h.flatten(1)], dim=1), log_det

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [N, D] -> images y in (0, 1): the inverse of `to_latent`."""
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        parts = [part.reshape(-1, *shape) for part, shape in zip(z.split(sizes, dim=1), self.latent_shapes)]
        h = parts[-1]
        for index in reversed(range(len(self.scales))):
            if index < len(self.scales) - 1:
                h = torch.cat([parts[index], h], dim=1)
            h = self.scales[index].inverse(h)
        return inverse_logit_transform(h)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) in nats per image [N], y in [0, 1]^D: the prior's density at the latents plus the log-determinant."""
        z, log_det = self.to_latent(y)
        return (-0.5 * z.pow(2) - HALF_LOG_2PI).sum(1) + log_det

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(y) [N] of x's 8-bit values dequantized, y = (k + u) / 256 with u ~ U[0, 1): from `generator` when one
        is given (validation, `vaegen test`), else from torch's global RNG (training; resume restores it)."""
        if generator is None:  # rand_like keeps the batch dimension symbolic under torch.compile
            noise = torch.rand_like(x, dtype=torch.float32)
        else:
            noise = torch.rand(x.shape, generator=generator, device=x.device)
        levels = torch.round(x.float() * 255.0)
        return self.log_prob((levels + noise) / 256.0)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, temperature: float = 1.0, class_weights: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """`n` images in [0, 1]: z ~ N(0, temperature² I) from the (CPU) `generator`, through the inverse flow
        (temperature 0: every image the one at z = 0)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.dims, generator=generator) * temperature
        return self.from_latent(z.to(device)).clamp(0.0, 1.0)
