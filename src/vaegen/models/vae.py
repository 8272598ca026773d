"""The VAE family: the convolutional VAE (and its conditional variant), its residual variant, and the `VAE`
family that trains them (reconstruction + β·KL).

`ConvVAE` with the default widths is the reference architecture: four stride-2
convolutions down, a linear bottleneck, four stride-2 transposed convolutions up. The one
difference: layers followed by BatchNorm have no bias of their own (BatchNorm's shift
replaces it, so the function class is the same and the count is 1,344 parameters lower at
the default widths). Every size is derived from the image size and the widths, so any size divisible by
2**len(widths) works, square or not.
"""

from __future__ import annotations


import math

import torch
import torch.nn.functional as F
from torch import nn

from vaegen.config import ModelConfig
from vaegen.models.family import Family
from vaegen.models.losses import MSE_SIGMA, DecoderLikelihood, kl_divergence, reconstruction_loss
from vaegen.models.registry import register_model


class VAE(Family):
    """Variational autoencoders: reconstruction + β·KL. Outputs: (decoder logits, μ, log σ²)."""

    name = "vae"
    terms = ("loss", "recon", "kl", "nelbo")
    headline = {"recon": "recon", "kl": "KL"}
    val_headline = {"nelbo": "recon + KL"}

    def training_terms(self, outputs, x, beta, loss):
        logits, mu, logvar = outputs
        recon = reconstruction_loss(logits.float(), x, loss.recon)
        kl = kl_divergence(mu.float(), logvar.float())
        # nelbo = recon + KL, the bound at β = 1: unlike the objective it compares epochs whatever the β schedule
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl}

    def images(self, outputs):
        return torch.sigmoid(outputs[0].float())

    @torch.no_grad()
    def validation_terms(self, model, x, y, generator, beta, loss):
        """val_mse (squared error of the posterior-mean reconstruction) compares runs whatever their loss."""
        logits, mu, logvar = model(x, y, generator=generator)
        terms = self.training_terms((logits, mu, logvar), x, beta, loss)
        squared_error = (model.decode(mu, y) - x).pow(2).sum() / len(x)
        return {**terms, "mse": squared_error}

    @torch.no_grad()
    def decoder_likelihood(self, model, data, loss, generator):
        """bce: Bernoulli; mse: the Gaussian of σ = 1/√2 the unweighted squared error implies; gaussian: the σ-VAE's
        Gaussian, its σ calibrated as training calibrates it per batch (σ² the mean squared error of reconstructions
        from sampled codes, log σ ≥ -6), here once over all of `data`."""
        if loss.recon == "bce":
            return DecoderLikelihood("bernoulli", note="the log-likelihood bce minimises; for grey levels between 0 "
                                     "and 1 it is not a normalised density, so the numbers compare only like models")
        if loss.recon == "mse":
            return DecoderLikelihood("gaussian", MSE_SIGMA, note="the fixed sigma = 1/sqrt(2) the mse loss implies (sum "
                                     "of squared errors = -log N(x; mean, sigma^2 I) - D/2 log pi); continuous density")
        squared, count = 0.0, 0
        for x, y in data:
            logits = model(x, y, generator=generator)[0]  # every latent family's forward puts its logits first
            squared += (torch.sigmoid(logits.float()) - x).pow(2).sum().item()
            count += x.numel()
        log_sigma = max(0.5 * math.log(squared / count), -6.0) if squared > 0 else -6.0
        return DecoderLikelihood("gaussian", math.exp(log_sigma), note="the learned sigma of the calibrated decoder, "
                                 "fitted on the training split as training fits it per batch; continuous density")

    @torch.no_grad()
    def log_weights(self, model, x, y, k, generator, decoder, batch_size):
        """z = μ + σ·ε drawn all at once (the same draws whatever `batch_size`), decoded `batch_size // N` draws at a
        time; conditional models condition the encoder and the decoder on y, as in training."""
        mu, logvar = (value.float() for value in model.encode(x, y))
        noise = torch.randn((k, *mu.shape), generator=generator, device=mu.device)
        z = mu + noise * torch.exp(0.5 * logvar)
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        log_q = (-0.5 * noise.pow(2) - 0.5 * logvar - half_log_2pi).sum(-1)
        log_prior = (-0.5 * z.pow(2) - half_log_2pi).sum(-1)
        step = max(1, batch_size // len(x))
        log_px = []
        for draws in z.split(step):
            labels = None if y is None else y.repeat(len(draws))
            logits = model.decode_logits(draws.flatten(0, 1), labels)
            log_px.append(decoder.log_prob(logits.view(*draws.shape[:2], *logits.shape[1:]), x))
        return torch.cat(log_px) + log_prior - log_q


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


class ImageModule(nn.Module):
    """What the image-making modules share: the layer that makes the images and class labels checked against
    `num_classes` when `conditional` is not "none" (subclasses set `decoder`, `conditional`, `num_classes`)."""

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the layer that produces the images (the adaptive adversarial weight is measured there)."""
        return self.decoder[-1].weight

    @property
    def is_conditional(self) -> bool:
        return self.conditional != "none"

    def _drawn_labels(self, n: int, generator: torch.Generator, class_weights: torch.Tensor | None,
                      labels: torch.Tensor | None) -> torch.Tensor | None:
        """`labels` as given, or (conditional models without them) n classes drawn with `class_weights` (default
        uniform) from `generator`; on the module's device."""
        if self.is_conditional and labels is None:
            weights = torch.ones(self.num_classes) if class_weights is None else class_weights.float()
            labels = torch.multinomial(weights, n, replacement=True, generator=generator)
        return labels.to(self.last_layer.device) if labels is not None else None

    def _check_labels(self, labels: torch.Tensor | None, batch: int, check_range: bool = True) -> torch.Tensor | None:
        """One long label per image (a single one applies to all). `check_range=False` skips reading their extremes,
        a host sync on a GPU: the training step's labels come from the data, in range by construction."""
        if not self.is_conditional:
            return None
        if labels is None:
            raise ValueError(
                f"this model is conditional on {self.num_classes} classes; pass labels (class indices, or names with vaegen.load)"
            )
        labels = torch.as_tensor(labels, device=self.last_layer.device).long().reshape(-1)
        if labels.numel() == 1 and batch != 1:  # one class for the whole batch, an empty one included
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"got {labels.numel()} labels for a batch of {batch}")
        if check_range and labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}]")
        return labels


@register_model("conv_vae", VAE())
class ConvVAE(ImageModule):
    """Images in [0, 1], shape [N, C, H, W]; `forward` returns decoder logits, mu and log-variance.

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
        self.encoder, features = self._make_encoder(in_widths, widths, cfg, flat)
        self.to_mu = nn.Linear(features, cfg.latent_dim)
        self.to_logvar = nn.Linear(features, cfg.latent_dim)

        self.label_embedding = nn.Embedding(num_classes, cfg.latent_dim) if cfg.conditional == "embedding" else None
        self.from_latent = nn.Linear(cfg.latent_dim + label_planes, flat)
        reversed_widths = widths[::-1]
        self.decoder = nn.Sequential(
            *self._decoder_stages(reversed_widths, cfg),
            nn.ConvTranspose2d(widths[0], channels, 4, stride=2, padding=1),
        )

    def _make_encoder(self, in_widths: list[int], widths: list[int], cfg: ModelConfig, flat: int) -> tuple[nn.Module, int]:
        """The encoder (images, with label planes for onehot, -> flat features) and its feature count."""
        return nn.Sequential(*self._encoder_stages(in_widths, widths, cfg), nn.Flatten()), flat

    def _encoder_stages(self, in_widths: list[int], widths: list[int], cfg: ModelConfig) -> list[nn.Module]:
        return [_down(i, o, norm=index > 0) for index, (i, o) in enumerate(zip(in_widths, widths))]

    def _decoder_stages(self, reversed_widths: list[int], cfg: ModelConfig) -> list[nn.Module]:
        return [_up(i, o) for i, o in zip(reversed_widths[:-1], reversed_widths[1:])]

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z | x), x: images [N, C, H, W] in [0, 1] (vaegen.load's pipeline
        checks what a user passes)."""
        return self._encode(x, self._check_labels(labels, x.shape[0]))

    def _encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` of images and labels already checked."""
        features = self._features(x, labels)
        return self.to_mu(features), self.to_logvar(features)

    def _features(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The encoder's flattened output, before the heads that make the code."""
        if self.conditional == "onehot":
            planes = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._decode_logits(z, self._check_labels(labels, z.shape[0]))

    def _decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """`decode_logits` of codes and labels already checked."""
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
        labels = self._check_labels(labels, x.shape[0], check_range=False)  # no host sync in the training step
        mu, logvar = self._encode(x, labels)
        if generator is None:  # randn_like keeps the batch dimension symbolic under torch.compile
            noise = torch.randn_like(mu)
        else:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + noise * torch.exp(0.5 * logvar)
        return self._decode_logits(z, labels), mu, logvar

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator, temperature: float = 1.0, class_weights: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`n` images from the prior, z ~ N(0, T² I), every draw from `generator` (the evaluation's samples);
        conditional models: `labels`, else drawn with `class_weights` (default uniform)."""
        z = torch.randn(n, self.latent_dim, generator=generator) * temperature
        labels = self._drawn_labels(n, generator, class_weights, labels)
        return self.decode(z.to(self.to_mu.weight.device), labels)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The decoded posterior mean: the model's deterministic reconstruction of `x`."""
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


@register_model("res_vae", VAE())
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


class RowGRU(nn.Module):
    """A bidirectional GRU that reads an image [N, C, H, W] as a sequence of H rows of C·W values and returns the last
    layer's final states, both directions: [N, 2 · hidden]."""

    def __init__(self, row_size: int, hidden: int, layers: int):
        super().__init__()
        self.gru = nn.GRU(row_size, hidden, num_layers=layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)  # [N, H, C·W]
        _, last = self.gru(rows)  # [layers · 2, N, hidden]
        return torch.cat([last[-2], last[-1]], dim=1)


@register_model("gru_vae", VAE())
class GRUVAE(ConvVAE):
    """ConvVAE's decoder with a recurrent encoder (the CNN-against-RNN comparison): a bidirectional GRU over the image's
    rows (`model.rnn_hidden` units per direction, `model.rnn_layers`), its final states to μ and log σ². Conditioning
    as ConvVAE's (one-hot planes enter the rows for onehot)."""

    def _make_encoder(self, in_widths: list[int], widths: list[int], cfg: ModelConfig, flat: int) -> tuple[nn.Module, int]:
        row_size = in_widths[0] * self.image_size[1]
        return RowGRU(row_size, cfg.rnn_hidden, cfg.rnn_layers), 2 * cfg.rnn_hidden
