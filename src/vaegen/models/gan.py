"""GANs: the DCGAN generator and discriminator (Radford et al. 2016), sized from the image like the VAE, with the
non-saturating loss, least squares (LSGAN, Mao et al. 2017), hinge, or the Wasserstein loss with gradient penalty
(WGAN-GP, Gulrajani et al. 2017); optional spectral norm on the discriminator (Miyato et al. 2018).

Generator: z -> a linear map to the coarsest grid (model.widths[-1] channels, image size / 2^len(widths)), then
stride-2 transposed convolutions up the widths in reverse, BatchNorm + ReLU, tanh out. Discriminator: stride-2
convolutions up model.widths with LeakyReLU(0.2), BatchNorm after all but the first (none for wgan_gp, whose penalty
is per image, nor with spectral norm), then one logit. Conditional: the generator reads z beside the class (a learned
embedding, or one-hot), the discriminator adds a projection of the class onto its features (Miyato & Koyama 2018).

The two players take turns on each batch (the loop's `game_step`): the discriminator learns on real images against
detached fakes, then every model.critic_steps-th batch the generator learns to fool it. The EMA of the weights
(train.ema) is what samples; the epoch rows log both losses, the critic's Wasserstein estimate (wgan_gp) and how
varied the samples are against the data, from which `trouble` names a discriminator that has won or a collapse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from vaegen.config import Config, LossConfig, ModelConfig
from vaegen.errors import ConfigError
from vaegen.models.family import Family, optimizer_words
from vaegen.models.losses import discriminator_loss, generator_loss
from vaegen.models.registry import register_model
from vaegen.models.vae import ImageModule

COLLAPSED_DIVERSITY = 0.2  # samples' pairwise distance below a fifth of the data's: a handful of images, not a distribution
DISCRIMINATOR_WON = 0.01  # a discriminator loss this small tells the generator nothing (its gradients vanish)


def grid_size(image_size: tuple[int, int], layers: int) -> tuple[int, int]:
    """The coarsest grid, image size / 2^layers; ConfigError when the image does not halve that often."""
    height, width = image_size
    if height % 2**layers or width % 2**layers:
        raise ConfigError(
            f"model.name dcgan halves the image once per model.widths entry ({layers}), but data.image_size "
            f"{height}x{width} is not divisible by 2^{layers} = {2**layers}; use a multiple of {2**layers} or fewer widths."
        )
    return height // 2**layers, width // 2**layers


class Generator(nn.Module):
    def __init__(self, latent_dim: int, label_dim: int, widths: tuple[int, ...], grid: tuple[int, int], channels: int):
        super().__init__()
        self.grid, self.top = grid, widths[-1]
        self.project = nn.Linear(latent_dim + label_dim, widths[-1] * grid[0] * grid[1], bias=False)
        self.top_norm = nn.BatchNorm2d(widths[-1])
        layers: list[nn.Module] = []
        for in_ch, out_ch in zip(widths[::-1], widths[::-1][1:]):
            layers += [nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[0], channels, 4, stride=2, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from inputs z (with the class code appended, for conditional models)."""
        h = self.project(z).view(len(z), self.top, *self.grid)
        return self.net(F.relu(self.top_norm(h)))


class Discriminator(nn.Module):
    def __init__(self, channels: int, widths: tuple[int, ...], grid: tuple[int, int], norm: str, num_classes: int):
        super().__init__()
        wrap = spectral_norm if norm == "spectral" else (lambda layer: layer)
        layers: list[nn.Module] = []
        for index, (in_ch, out_ch) in enumerate(zip((channels, *widths), widths)):
            layers.append(wrap(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1, bias=index == 0 or norm != "batch")))
            if index > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, True))
        self.features = nn.Sequential(*layers, nn.Flatten())
        features = widths[-1] * grid[0] * grid[1]
        self.logit = wrap(nn.Linear(features, 1))
        # the projection discriminator: the class's vector dotted with the image's features
        self.projection = wrap(nn.Embedding(num_classes, features)) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """One logit per image in [-1, 1]."""
        h = self.features(images)
        logits = self.logit(h).squeeze(1)
        if self.projection is not None:
            logits = logits + (self.projection(labels) * h).sum(1)
        return logits


class DCGAN(ImageModule):
    """The generator and the discriminator; `generate` draws images in [0, 1] with the generator alone."""

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int):
        super().__init__()
        grid = grid_size(image_size, len(cfg.widths))
        self.latent_dim, self.num_classes, self.conditional = cfg.latent_dim, num_classes, cfg.conditional
        self.label_embedding = nn.Embedding(num_classes, cfg.latent_dim) if cfg.conditional == "embedding" else None
        label_dim = {"none": 0, "onehot": num_classes, "embedding": cfg.latent_dim}[cfg.conditional]
        self.generator = Generator(cfg.latent_dim, label_dim, cfg.widths, grid, channels)
        norm = "spectral" if cfg.spectral_norm else "none" if cfg.gan_loss == "wgan_gp" else "batch"
        self.discriminator = Discriminator(channels, cfg.widths, grid, norm, num_classes if self.is_conditional else 0)
        self.apply(dcgan_init)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.generator.net[-2].weight  # the transposed convolution that makes the images

    def fake(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The generator's images in [-1, 1] (the discriminator's scale) for codes z and classes `labels`."""
        if self.conditional == "embedding":
            z = torch.cat([z, self.label_embedding(labels)], 1)
        elif self.conditional == "onehot":
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1)
        return self.generator(z)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The discriminator's logits of images x in [0, 1]."""
        return self.discriminator(x * 2.0 - 1.0, labels)

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator, temperature: float = 1.0, class_weights: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`n` images in [0, 1] from z ~ N(0, temperature² I) drawn with `generator` (temperature < 1 trades variety
        for fidelity, the truncation trick's effect); conditional models: `labels`, else drawn with `class_weights`."""
        device = self.last_layer.device
        z = torch.randn(n, self.latent_dim, generator=generator) * temperature
        labels = self._drawn_labels(n, generator, class_weights, labels)
        return (self.fake(z.to(device), labels) + 1.0) / 2.0


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: convolution and linear weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def gradient_penalty(model: DCGAN, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, mix: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's (‖∇D(x̂)‖ - 1)², x̂ = mix·real + (1 - mix)·fake, averaged over the batch (images in [-1, 1])."""
    with torch.enable_grad():
        between = (mix * real + (1 - mix) * fake).detach().requires_grad_(True)
        scores = model.discriminator(between, labels)
        grad = torch.autograd.grad(scores.sum(), between, create_graph=model.training)[0]  # training: the penalty's own gradient reaches D
    return (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()


def diversity(images: torch.Tensor) -> torch.Tensor:
    """The mean distance between two different images of a batch (the same measure for samples and data)."""
    distances = torch.cdist(images.flatten(1).float(), images.flatten(1).float())
    n = len(images)
    return distances.sum() / max(n * (n - 1), 1)


class GANFamily(Family):
    """A generator against a discriminator, trained in turns; no likelihood, no encoder."""

    name = "gan"
    headline = {"g_loss": "G"}
    val_headline = {"diversity": "diversity"}
    weighs_beta = False
    two_player = True

    def __init__(self, loss: str = "non_saturating", critic_steps: int = 1, penalty: float = 10.0, patience: int = 3):
        self.loss, self.critic_steps, self.penalty, self.patience = loss, critic_steps, penalty, patience
        wasserstein = ("wasserstein", "gradient_penalty") if loss == "wgan_gp" else ()
        self.terms = ("loss", "g_loss", "d_real", "d_fake", *wasserstein)
        if loss == "wgan_gp":
            self.headline = {"g_loss": "G", "wasserstein": "W"}

    def configured(self, model: ModelConfig) -> GANFamily:
        return GANFamily(model.gan_loss, model.critic_steps, model.gradient_penalty, model.collapse_patience)

    def describe(self, config: Config) -> dict[str, str]:
        model = config.model
        norm = ", spectral norm" if model.spectral_norm else ""
        penalty = f", gradient penalty {model.gradient_penalty:g}" if model.gan_loss == "wgan_gp" else ""
        return {"model": f"{model.name}, z {model.latent_dim}, widths {list(model.widths)}{norm}, conditional {model.conditional}",
                "training": f"{model.gan_loss} loss{penalty}, {model.critic_steps} critic step(s) per generator step, "
                            f"{optimizer_words(config)}"}

    def check(self, config: Config) -> None:
        problems = [
            (config.sampler.name == "gmm", "sampler.name is gmm, but a GAN has no encoder whose codes a mixture could be "
             "fitted on; its samples come from the generator: set sampler.name: prior"),
            (config.output.select != "fid", f"output.select is {config.output.select}, but a GAN has no likelihood or "
             "reconstruction to select on; its best epoch is the one with the lowest FD: set output.select: fid"),
            (config.optim.skip_grad_norm is not None, "optim.skip_grad_norm skips a whole step, which a GAN's two "
             "players take apart; use optim.grad_clip instead, or remove it"),
            (config.train.compile is True or config.train.cuda_graph, "train.compile and train.cuda_graph capture one "
             "training step, and a GAN's players step in turns; set train.compile: auto (not compiled for GANs) and "
             "train.cuda_graph: false"),
        ]
        for bad, message in problems:
            if bad:
                raise ConfigError(f"model.name {config.model.name}: {message}.")

    def players(self, model: DCGAN) -> tuple[nn.Module, nn.Module]:
        """(the critic, the generator): each player's update moves its own weights only."""
        return model.discriminator, nn.ModuleList([model.generator, *([model.label_embedding] if model.label_embedding else [])])

    def critic_terms(self, model: DCGAN, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The discriminator's objective ("loss") on real x against fakes from z ~ N(0, I) (torch's global RNG), and
        the generator's loss on the same fakes, for the log."""
        z = torch.randn(len(x), model.latent_dim, device=x.device)
        with torch.no_grad():
            fake = model.fake(z, y)
        mix = torch.rand(len(x), 1, 1, 1, device=x.device) if self.loss == "wgan_gp" else None
        return self._terms(model, x * 2.0 - 1.0, fake, y, mix)

    def _terms(self, model: DCGAN, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None, mix: torch.Tensor | None) -> dict:
        real_logits, fake_logits = model.discriminator(real, y), model.discriminator(fake, y)
        terms = {"loss": discriminator_loss(real_logits, fake_logits, self.loss), "g_loss": generator_loss(fake_logits, self.loss),
                 "d_real": real_logits.mean(), "d_fake": fake_logits.mean()}
        if self.loss == "wgan_gp":
            penalty = gradient_penalty(model, real, fake, y, mix)
            terms["wasserstein"] = terms["d_real"] - terms["d_fake"]
            terms["gradient_penalty"] = penalty
            terms["loss"] = terms["loss"] + self.penalty * penalty
        return {name: value.float() for name, value in terms.items()}

    def generator_objective(self, model: DCGAN, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The generator's loss on new fakes (z from torch's global RNG), of the classes of the batch's images."""
        z = torch.randn(len(x), model.latent_dim, device=x.device)
        return generator_loss(model.discriminator(model.fake(z, y), y), self.loss)

    @torch.no_grad()
    def validation_terms(self, model, x, y, generator, beta, loss: LossConfig) -> dict[str, torch.Tensor]:
        """The critic's terms on held-out images against fakes from `generator`, and the fakes' diversity relative
        to the held-out images' (1: as varied as the data; near 0: the generator has collapsed)."""
        z = torch.randn(len(x), model.latent_dim, generator=generator, device=x.device)
        mix = torch.rand(len(x), 1, 1, 1, generator=generator, device=x.device) if self.loss == "wgan_gp" else None
        fake = model.fake(z, y)
        terms = self._terms(model, x * 2.0 - 1.0, fake, y, mix)
        terms["diversity"] = diversity(fake) / diversity(x * 2.0 - 1.0).clamp(min=1e-8)
        return terms

    def trouble(self, history: list[dict]) -> str | None:
        """A discriminator that has won (its loss near 0: the generator's gradients vanish) or samples that have
        collapsed, either for the last model.collapse_patience epochs."""
        recent = history[-self.patience:]
        if len(recent) < self.patience:
            return None
        if self.loss != "wgan_gp" and all(row.get("train_loss", math.inf) < DISCRIMINATOR_WON for row in recent):
            return (f"the discriminator has won: its loss has been below {DISCRIMINATOR_WON} for {self.patience} epochs, "
                    "so the generator learns nothing more (training has diverged). Try model.spectral_norm: true, "
                    "model.gan_loss: wgan_gp or hinge, or a lower optim.lr")
        # a new generator's images barely differ: only a fall from varied samples is a collapse
        was_varied = any(row.get("val_diversity", 0.0) >= COLLAPSED_DIVERSITY for row in history[:-self.patience])
        if was_varied and all(row.get("val_diversity", math.inf) < COLLAPSED_DIVERSITY for row in recent):
            return (f"mode collapse: the samples have differed from each other less than {COLLAPSED_DIVERSITY:.0%} as much "
                    f"as the data's images for {self.patience} epochs (val_diversity), after they were more varied. Try "
                    "model.gan_loss: wgan_gp, model.spectral_norm: true, or a lower optim.lr")
        return None


@register_model("dcgan", GANFamily())
def build_dcgan(cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int) -> DCGAN:
    return DCGAN(cfg, image_size, channels, num_classes)
