"""The hierarchical VAE (NVAE, Vahdat & Kautz 2020; VDVAE, Child 2021): a bottom-up encoder, and a top-down decoder
that draws a grid of latents at each of `model.levels` resolutions, each level conditioned on the ones above it.

Levels: level 0 sits at the coarsest resolution (the encoder's last stage, H / 2**len(widths)), level l at the one
2**l times finer, so `model.levels` is at most len(model.widths) (32 px, widths [64, 128, 256]: 4x4, 8x8, then 16x16
if levels is 3). Resolutions finer than the last level are decoded without latents.

Codes: level l's latent is z_l = μ_p + σ_p·ε_l, where p(z_l | z_<l) = N(μ_p, σ_p²) comes from the top-down state. The
flat code that the latent tools see (`encode`, `decode`, the mixture sampler, traversals, vaegen.load) is every
level's ε, flattened, top level first. Its prior is N(0, I), so decoding ε ~ N(0, T² I) is ancestral sampling at
temperature T, and KL(q(ε_l) || N(0, I)) = KL(q(z_l) || p(z_l | z_<l)) (the map from ε to z is affine): the latent
diagnostics' KL per dimension is the model's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaegen.config import Config, ModelConfig
from vaegen.errors import ConfigError
from vaegen.models.family import Family
from vaegen.models.losses import reconstruction_loss, standard_normal_kl
from vaegen.models.registry import register_model
from vaegen.models.vae import VAE, ImageModule, ResidualBlock, _down, _up

class HierarchicalVAE(Family):
    """Hierarchical VAEs: reconstruction + β·Σ_l max(KL_l, model.free_bits), KL_l the batch-mean KL of level l.
    Outputs: (decoder logits, KL per image and level [N, levels]).

    The term names follow the level count (kl_level0, kl_level1, ...): `configured` makes the family of a config's
    levels and free bits."""

    name = "hvae"
    headline = {"recon": "recon", "kl": "KL"}
    val_headline = {"nelbo": "recon + KL"}

    def __init__(self, levels: int = 2, free_bits: float = 0.0):
        self.levels, self.free_bits = levels, free_bits

    def configured(self, model: ModelConfig) -> HierarchicalVAE:
        return HierarchicalVAE(model.levels, model.free_bits)

    def describe(self, config: Config) -> dict[str, str]:
        model = config.model
        words = super().describe(config)
        return {**words, "model": f"{model.name}, {model.levels} latent levels of {model.latent_channels} channels, "
                                  f"widths {list(model.widths)}, conditional {model.conditional}"}

    @property
    def terms(self) -> tuple[str, ...]:
        return ("loss", "recon", "kl", "nelbo", *(f"kl_level{level}" for level in range(self.levels)))

    def check(self, config: Config) -> None:
        model, stages = config.model, len(config.model.widths)
        temperatures = model.level_temperatures
        if model.levels > stages:
            raise ConfigError(
                f"model.levels is {model.levels}, but model.widths {list(model.widths)} has {stages} stride-2 stages, and "
                f"each level sits at the resolution of one of them, the coarsest first; set model.levels to at most "
                f"{stages}, or add widths (each halves the image once more).")
        if temperatures is not None and len(temperatures) != model.levels:
            raise ConfigError(
                f"model.level_temperatures has {len(temperatures)} entries for model.levels {model.levels}; give one "
                f"temperature per level, top (coarsest) first, or null for all 1.")

    def training_terms(self, outputs, x, beta, loss):
        logits, kls = outputs
        recon = reconstruction_loss(logits.float(), x, loss.recon)
        per_level = kls.float().mean(0)
        kl = per_level.sum()
        # free bits (Kingma et al. 2016): a level's KL below the floor costs the floor and is not pushed lower
        penalised = per_level.clamp(min=self.free_bits).sum()
        levels = {f"kl_level{level}": value for level, value in enumerate(per_level.unbind())}
        # nelbo = recon + the true KL, the bound at β = 1, whatever the β schedule and the free bits
        return {"loss": recon + beta * penalised, "recon": recon, "kl": kl, "nelbo": recon + kl, **levels}

    def images(self, outputs):
        return torch.sigmoid(outputs[0].float())

    @torch.no_grad()
    def validation_terms(self, model, x, y, generator, beta, loss):
        """val_mse (squared error of the posterior-mean reconstruction) compares runs whatever their loss."""
        terms = self.training_terms(model(x, y, generator=generator), x, beta, loss)
        squared_error = (model.reconstruct(x, y) - x).pow(2).sum() / len(x)
        return {**terms, "mse": squared_error}

    # the VAE's densities: bce and mse fix them, gaussian's σ is calibrated on the logits the forward pass puts first
    decoder_likelihood = VAE.decoder_likelihood

    @torch.no_grad()
    def log_weights(self, model, x, y, k, generator, decoder, batch_size):
        """k joint draws of every level top-down, z_l ~ q(z_l | x, z_<l), weighted in ε coordinates (the Jacobians σ_p
        cancel): log p(x | z) + Σ_l [log N(ε_l; 0, I) - log N(ε_l; μ_l, σ_l²)]. The noise is drawn all at once, so
        the draws do not depend on `batch_size`; `batch_size // N` draws are decoded at a time."""
        noise = torch.randn((k, len(x), model.latent_dim), generator=generator, device=x.device)
        step = max(1, batch_size // len(x))
        weights = []
        for chunk in noise.split(step):
            draws = len(chunk)
            images, labels = x.repeat(draws, 1, 1, 1), None if y is None else y.repeat(draws)
            per_level = model.split(chunk.flatten(0, 1))
            logits, posteriors = model.infer(images, labels, lambda level, mu: per_level[level].to(mu.dtype))
            log_ratio = sum(_log_prior_over_posterior(mu, logvar, noise) for mu, logvar, noise in posteriors)
            weights.append((decoder.log_prob(logits, images) + log_ratio).view(draws, len(x)))
        return torch.cat(weights)


def _log_prior_over_posterior(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log N(ε; 0, I) - log N(ε; mu, exp(logvar)) per image, for ε = mu + exp(logvar / 2)·noise."""
    mu, logvar, noise = mu.float(), logvar.float(), noise.float()
    eps = mu + torch.exp(0.5 * logvar) * noise
    return (0.5 * (noise.pow(2) - eps.pow(2) + logvar)).flatten(1).sum(1)


class Level(nn.Module):
    """One latent level at one resolution of the top-down path, `width` channels there: the prior from the state h,
    the posterior from h and the encoder's features at that resolution, and z merged back into h."""

    def __init__(self, width: int, latent_channels: int):
        super().__init__()
        self.prior = nn.Conv2d(width, 2 * latent_channels, 3, padding=1)
        nn.init.zeros_(self.prior.weight)  # the prior starts at N(0, I) wherever the state is
        nn.init.zeros_(self.prior.bias)
        # posterior as a residual on the prior (NVAE): q(ε) = N(μ, σ²), so q(z) = N(μ_p + σ_p·μ, σ_p²·σ²)
        self.posterior = nn.Conv2d(2 * width, 2 * latent_channels, 3, padding=1)
        self.merge = nn.Conv2d(latent_channels, width, 1)

    def posterior_of(self, h: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(ε | x, z_<l)."""
        mu, logvar = self.posterior(torch.cat([h, features], dim=1)).chunk(2, dim=1)
        return mu, logvar

    def forward(self, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The state with z = μ_p + σ_p·ε merged in."""
        mu, logvar = self.prior(h).chunk(2, dim=1)
        return h + self.merge(mu + torch.exp(0.5 * logvar) * eps)


@register_model("hvae", HierarchicalVAE())
class HVAE(ImageModule):
    """Images in [0, 1], [N, C, H, W]. Encoder: ConvVAE's stride-2 stages, each followed by `model.blocks` residual
    blocks, keeping every stage's feature map. Decoder: from a learned state at the coarsest resolution, at each
    resolution (coarsest first) a latent level while levels remain, `model.blocks` residual blocks, and a transposed
    convolution up (the last one to image logits). `latent_dim` is every level's grid, flattened.

    Conditioning: a learned per-class vector is added to the top-down state ("onehot" and "embedding"); "onehot" also
    adds the label's one-hot planes to the encoder's input."""

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int = 1):
        super().__init__()
        self.image_size, self.channels, self.num_classes = tuple(image_size), channels, num_classes
        self.conditional = cfg.conditional
        widths = list(cfg.widths)
        factor = 2 ** len(widths)
        height, width = self.image_size
        if height % factor or width % factor:
            raise ValueError(f"image size {self.image_size} is not divisible by {factor}")
        if cfg.levels > len(widths):
            raise ValueError(f"{cfg.levels} levels need at least {cfg.levels} stride-2 stages; model.widths has {len(widths)}")
        self.latent_shapes = [(cfg.latent_channels, height // factor * 2**level, width // factor * 2**level)
                              for level in range(cfg.levels)]
        self.latent_dim = sum(math.prod(shape) for shape in self.latent_shapes)
        self.level_temperatures = list(cfg.level_temperatures or [1.0] * cfg.levels)

        label_planes = num_classes if cfg.conditional == "onehot" else 0
        in_widths = [channels + label_planes] + widths[:-1]
        self.encoder = nn.ModuleList(
            nn.Sequential(_down(i, o, norm=index > 0), *(ResidualBlock(o) for _ in range(cfg.blocks)))
            for index, (i, o) in enumerate(zip(in_widths, widths))
        )
        top_down = widths[::-1]  # the decoder's widths, coarsest first
        self.top_state = nn.Parameter(torch.zeros(1, top_down[0], height // factor, width // factor))
        self.label_embedding = nn.Embedding(num_classes, top_down[0]) if self.is_conditional else None
        self.levels = nn.ModuleList(Level(w, cfg.latent_channels) for w in top_down[:cfg.levels])
        ups = [*(_up(i, o) for i, o in zip(top_down[:-1], top_down[1:])),
               nn.ConvTranspose2d(widths[0], channels, 4, stride=2, padding=1)]
        self.decoder = nn.ModuleList(
            nn.Sequential(*(ResidualBlock(w) for _ in range(cfg.blocks)), up) for w, up in zip(top_down, ups)
        )

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder[-1][-1].weight

    def _features(self, x: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """The encoder's feature map at each level's resolution, level 0 (the coarsest) first."""
        if self.conditional == "onehot":
            planes = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        return features[::-1][: len(self.levels)]

    def _top_down(self, n: int, labels: torch.Tensor | None, epsilon_at) -> torch.Tensor:
        """Decoder logits from the learned top state; `epsilon_at(level, h)` gives the level's ε from the state h there
        (a posterior draw, the posterior mean, or a given code)."""
        h = self.top_state.expand(n, -1, -1, -1)
        if self.label_embedding is not None:
            h = h + self.label_embedding(labels)[:, :, None, None]
        for index, stage in enumerate(self.decoder):
            if index < len(self.levels):
                h = self.levels[index](h, epsilon_at(index, h))
            h = stage(h)
        return h

    def infer(self, x: torch.Tensor, labels: torch.Tensor | None, noise_at) -> tuple[torch.Tensor, list[tuple]]:
        """Decoder logits and each level's posterior (μ, log σ², noise) over ε, drawing ε = μ + σ·noise top-down with
        noise = `noise_at(level, μ)` (zeros: the posterior means). Labels already checked."""
        features = self._features(x, labels)
        posteriors = []

        def draw(level: int, h: torch.Tensor) -> torch.Tensor:
            mu, logvar = self.levels[level].posterior_of(h, features[level])
            noise = noise_at(level, mu)
            posteriors.append((mu, logvar, noise))
            return mu + torch.exp(0.5 * logvar) * noise

        return self._top_down(len(x), labels, draw), posteriors

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder logits [N, C, H, W] and each image's KL per level [N, levels], in nats summed over the level's grid."""
        labels = self._check_labels(labels, x.shape[0], check_range=False)  # no host sync in the training step

        def noise_at(level: int, mu: torch.Tensor) -> torch.Tensor:
            if generator is None:  # randn_like keeps the batch dimension symbolic under torch.compile
                return torch.randn_like(mu)
            return torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)

        logits, posteriors = self.infer(x, labels, noise_at)
        return logits, torch.stack([standard_normal_kl(mu.float(), logvar.float()).flatten(1).sum(1) for mu, logvar, _ in posteriors], dim=1)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every level's posterior mean and log-variance over ε, flattened [N, latent_dim], each level's given the
        means above it."""
        _, posteriors = self.infer(x, self._check_labels(labels, x.shape[0]), lambda level, mu: torch.zeros_like(mu))
        return (torch.cat([mu.flatten(1) for mu, _, _ in posteriors], dim=1),
                torch.cat([logvar.flatten(1) for _, logvar, _ in posteriors], dim=1))

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Flat codes [N, latent_dim] -> each level's ε grid [N, latent_channels, h, w], top level first."""
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        return [part.reshape(-1, *shape) for part, shape in zip(z.split(sizes, dim=1), self.latent_shapes)]

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = self._check_labels(labels, z.shape[0])
        epsilons = self.split(z.to(self.top_state.dtype))
        return self._top_down(len(z), labels, lambda level, h: epsilons[level])

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] from flat codes [N, latent_dim]."""
        return torch.sigmoid(self.decode_logits(z, labels))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The decoded posterior means: decode(encode(x)[0]) in one pass."""
        logits, _ = self.infer(x, self._check_labels(labels, x.shape[0]), lambda level, mu: torch.zeros_like(mu))
        return torch.sigmoid(logits)

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator, temperature: float = 1.0, class_weights: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`n` images by ancestral sampling, level l's ε ~ N(0, (T·t_l)² I) with t_l its model.level_temperatures
        entry, every draw from `generator`; conditional models: `labels`, else drawn with `class_weights` (default
        uniform)."""
        scales = torch.cat([torch.full((math.prod(shape),), t) for shape, t in zip(self.latent_shapes, self.level_temperatures)])
        z = torch.randn(n, self.latent_dim, generator=generator) * temperature * scales
        labels = self._drawn_labels(n, generator, class_weights, labels)
        return self.decode(z.to(self.top_state.device), labels)
