"""Denoising diffusion (DDPM, Ho et al. 2020): a U-Net learns to undo Gaussian noise added to the training images over
`model.timesteps` steps, and samples by denoising pure noise step by step, with DDPM's ancestral sampler or, in far
fewer steps, DDIM's (Song et al. 2021): deterministic, or drawing `model.ddim_eta` of DDPM's noise at each step.

The U-Net and the schedulers are diffusers' (UNet2DModel, DDPMScheduler, DDIMScheduler): a well-kept U-Net and
schedulers whose noise schedules, targets and update rules are tested against the papers, rather than our own copies;
the cost is one dependency (diffusers, imported only when a diffusion model is built: about a second). The U-Net has
one resolution per entry of `model.widths` (its channels there, halving the image between them),
`model.layers_per_block` residual blocks at each, and, with `model.attention`, self-attention at the lowest
resolution only.

Training: images in [0, 1] are mapped to x0 in [-1, 1], t ~ U{0, ..., T-1} and ε ~ N(0, I) come from torch's global
RNG (which last.pt restores, so a resumed run continues exactly), x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε, and the U-Net predicts ε
or v = √ᾱ_t·ε − √(1-ᾱ_t)·x0 (`model.prediction`, Salimans & Ho 2022). Conditional models (`model.conditional:
embedding`) add a learned class vector to the U-Net's time embedding; an extra "null" class, put in place of the true
one with probability `model.label_dropout`, gives the unconditional model that classifier-free guidance (Ho & Salimans
2022, `model.guidance`) pushes the samples away from.

Sampling (`model.diffusion_sampler`, `model.sample_steps`, `model.ddim_eta`, `model.guidance`) changes nothing in the
weights, so these are the family's sampling keys: `vaegen test --set model.sample_steps=250` scores a trained model
with another count.
There is no encoder, so no latent codes, no likelihood bound and no latent mixture.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from vaegen.config import Config, ModelConfig
from vaegen.errors import ConfigError
from vaegen.models.family import Family, optimizer_words
from vaegen.models.registry import register_model
from vaegen.models.vae import ImageModule

if TYPE_CHECKING:
    import diffusers

# diffusers' names of the schedules and targets
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTION_TYPES = {"epsilon": "epsilon", "v": "v_prediction"}


class Diffusion(Family):
    """Diffusion models: the objective is the squared error of the U-Net's prediction (of ε, or of v), summed over the
    pixels and averaged over the images. Summed, not averaged over pixels, so that its scale is that of the other
    families' per-image terms (a VAE's recon) and Adam's updates, which ignore the scale, are the same. Outputs:
    (prediction, target), both [N, C, H, W]."""

    name = "ddpm"
    weighs_beta = False
    sampling_keys = ("diffusion_sampler", "sample_steps", "ddim_eta", "guidance")
    temperature_means = "scale of the noise the denoising starts from"

    def __init__(self, prediction: str = "epsilon"):
        symbol = "ε" if prediction == "epsilon" else "v"
        self.headline = self.val_headline = {"loss": f"{symbol} error²/image"}

    def configured(self, model: ModelConfig) -> Diffusion:
        return Diffusion(model.prediction)

    def adjustable(self, config: Config) -> tuple[str, ...]:
        """Guidance steers towards a class: not for an unconditional model."""
        return tuple(key for key in self.sampling_keys if key != "guidance" or config.model.conditional != "none")

    def describe(self, config: Config) -> dict[str, str]:
        model = config.model
        steps = f"{model.timesteps} steps" if model.diffusion_sampler == "ddpm" else f"{model.sample_steps} of its {model.timesteps} steps"
        if model.diffusion_sampler == "ddim" and model.ddim_eta > 0:
            steps += f", η {model.ddim_eta:g}"
        guidance = f", guidance {model.guidance:g}" if model.conditional != "none" else ""
        return {"model": f"{model.name}, U-Net widths {list(model.widths)}, {model.timesteps} noise levels "
                         f"({model.noise_schedule}), {model.prediction} prediction, conditional {model.conditional}",
                "training": optimizer_words(config),
                "sampler": f"{model.diffusion_sampler.upper()} from Gaussian noise, {steps}{guidance}"}

    def halvings(self, model: ModelConfig) -> tuple[int, str]:
        times = len(model.widths) - 1  # diffusers' U-Net halves the image between its levels, not after the last
        return times, f"the U-Net's {times} halving(s) between its {len(model.widths)} model.widths levels"

    def check(self, config: Config) -> None:
        model, select = config.model, config.output.select
        linear_end = 0.02 * 1000 / model.timesteps
        rules = [
            (model.conditional == "onehot", "model.conditional is onehot, which feeds the class to an encoder as input "
             "planes; a ddpm has no encoder: its class enters the U-Net through a learned class embedding; set "
             "model.conditional: embedding."),
            (config.sampler.name == "gmm", "sampler.name is gmm, but a ddpm has no encoder and so no latent codes for "
             "a mixture to fit: its samples come from its own reverse diffusion; set sampler.name: prior."),
            (select not in ("fid", "val_loss"), f"output.select is {select}, which a ddpm does not report (it has no "
             "reconstruction or KL term); select on fid, or on val_loss (the validation denoising error)."),
            (model.diffusion_sampler == "ddim" and model.sample_steps > model.timesteps, f"model.sample_steps is "
             f"{model.sample_steps}, more than the model.timesteps {model.timesteps} that DDIM can step through; set "
             f"model.sample_steps to at most {model.timesteps}."),
            (model.noise_schedule == "linear" and linear_end >= 1, f"model.noise_schedule linear scales Ho et al.'s β "
             f"(0.02 at the last of 1000 steps) by 1000/model.timesteps, so {model.timesteps} steps would need a β of "
             f"{linear_end:g}, beyond 1; set model.timesteps above 20, or model.noise_schedule: cosine."),
            (model.diffusion_sampler == "ddpm" and model.ddim_eta > 0, f"model.ddim_eta is {model.ddim_eta:g}, but "
             "model.diffusion_sampler is ddpm, whose ancestral steps always draw their whole noise; set "
             "model.diffusion_sampler: ddim, or model.ddim_eta: 0."),
            (model.conditional == "none" and model.guidance != 1, f"model.guidance is {model.guidance}, but the model "
             "is unconditional and guidance steers towards a class; set model.conditional: embedding, or remove "
             "model.guidance."),
            (model.guidance != 1 and model.label_dropout == 0, f"model.guidance is {model.guidance}, which needs the "
             "unconditional model that training learns only when model.label_dropout drops some classes; set "
             "model.label_dropout (e.g. 0.1), or model.guidance: 1."),
        ]
        for broken, message in rules:
            if broken:
                raise ConfigError(message)

    def training_terms(self, outputs, x, beta, loss):
        prediction, target = outputs
        return {"loss": (prediction.float() - target.float()).pow(2).flatten(1).sum(1).mean()}

    @torch.no_grad()
    def validation_terms(self, model, x, y, generator, beta, loss):
        """The same error, t and ε drawn from `generator`."""
        return self.training_terms(model(x, y, generator=generator), x, beta, loss)


def schedule_settings(cfg: ModelConfig) -> dict:
    """The noise schedule and target in diffusers' terms, shared by the training and the sampling schedulers. Linear β
    runs from 1e-4 to 0.02 at 1000 steps, scaled by 1000/T as Nichol & Dhariwal 2021 do, so that any T ends near pure
    noise; clip_sample keeps each step's predicted x0 in [-1, 1], as Ho et al. do."""
    scale = 1000 / cfg.timesteps
    return {"num_train_timesteps": cfg.timesteps, "beta_schedule": BETA_SCHEDULES[cfg.noise_schedule],
            "beta_start": 1e-4 * scale, "beta_end": 0.02 * scale, "prediction_type": PREDICTION_TYPES[cfg.prediction],
            "clip_sample": True}


def load_diffusers():
    """The diffusers package, imported when a diffusion model is first built or sampled: importing it costs every
    vaegen command about a second, and most runs train no diffusion model."""
    import diffusers

    return diffusers


def build_unet(cfg: ModelConfig, image_size: tuple[int, int], channels: int, classes: int | None) -> diffusers.UNet2DModel:
    """The U-Net: a resolution per width; attention (one head) at the lowest one when `cfg.attention`; GroupNorm in as
    many groups (up to 32) as divide every width; `classes` class embeddings added to the time embedding, or none."""
    widths, attention = list(cfg.widths), "Attn" if cfg.attention else ""
    return load_diffusers().UNet2DModel(
        sample_size=tuple(image_size), in_channels=channels, out_channels=channels, block_out_channels=widths,
        layers_per_block=cfg.layers_per_block,
        down_block_types=["DownBlock2D"] * (len(widths) - 1) + [f"{attention}DownBlock2D"],
        up_block_types=[f"{attention}UpBlock2D"] + ["UpBlock2D"] * (len(widths) - 1),
        add_attention=cfg.attention, attention_head_dim=widths[-1], norm_num_groups=math.gcd(32, *widths),
        num_class_embeds=classes,
    )


@register_model("ddpm", Diffusion())
class DDPM(ImageModule):
    """Images in [0, 1], [N, C, H, W]; `forward` returns the U-Net's prediction and its target at random noise levels,
    `generate` denoises pure noise. Conditional ("embedding" only): class k is embedding k, the null class
    `num_classes`."""

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int = 1):
        super().__init__()
        self.image_size, self.channels, self.num_classes = tuple(image_size), channels, num_classes
        self.conditional, self.label_dropout = cfg.conditional, cfg.label_dropout
        self.diffusion_sampler, self.sample_steps, self.guidance = cfg.diffusion_sampler, cfg.sample_steps, cfg.guidance
        self.ddim_eta = cfg.ddim_eta
        self.schedule = schedule_settings(cfg)
        self.scheduler = load_diffusers().DDPMScheduler(**self.schedule)  # the forward process: ᾱ_t, add_noise, get_velocity
        self.unet = build_unet(cfg, image_size, channels, num_classes + 1 if self.is_conditional else None)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.unet.conv_out.weight

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """(the U-Net's prediction, its target) for x at a noise level t ~ U{0..T-1} per image, with t, ε and the dropped
        classes from `generator`, or the global RNG when None (training)."""
        labels = self._check_labels(labels, x.shape[0], check_range=False)  # no host sync in the training step
        x0 = x * 2 - 1
        steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (x.shape[0],), generator=generator, device=x.device)
        if generator is None:  # randn_like keeps the batch dimension symbolic under torch.compile
            noise = torch.randn_like(x0)
        else:
            noise = torch.randn(x0.shape, generator=generator, device=x.device, dtype=x0.dtype)
        if labels is not None and self.training and self.label_dropout > 0:
            dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < self.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.num_classes), labels)
        noisy = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.scheduler.config.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        return self.unet(noisy, t, class_labels=labels).sample, target

    def sampling_scheduler(self) -> diffusers.DDPMScheduler | diffusers.DDIMScheduler:
        """A fresh scheduler for one sampling run: DDPM over every training step, or DDIM over `sample_steps`, spaced to
        start at the last training step ("trailing", Lin et al. 2024), so that few steps still start from pure noise."""
        if self.diffusion_sampler == "ddpm":
            scheduler = load_diffusers().DDPMScheduler(**self.schedule)
            scheduler.set_timesteps(self.schedule["num_train_timesteps"])
        else:
            scheduler = load_diffusers().DDIMScheduler(**self.schedule, timestep_spacing="trailing")
            scheduler.set_timesteps(self.sample_steps)
        return scheduler

    def denoiser_output(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The U-Net's prediction at step t; with guidance s ≠ 1, unconditional + s·(class − unconditional), both from
        one batch."""
        if labels is None or self.guidance == 1:
            return self.unet(x, t, class_labels=labels).sample
        null = torch.full_like(labels, self.num_classes)
        conditional, unconditional = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample.chunk(2)
        return unconditional + self.guidance * (conditional - unconditional)

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator, temperature: float = 1.0, class_weights: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`n` images in [0, 1] denoised from x_T ~ N(0, T² I) (T the temperature, which also scales DDPM's noise at each
        step), in eval mode; every draw from `generator` (CPU). Conditional models: `labels`, else drawn with
        `class_weights` (default uniform)."""
        device = self.last_layer.device
        labels = self._drawn_labels(n, generator, class_weights, labels)
        labels = self._check_labels(labels, n)
        scheduler = self.sampling_scheduler()
        x = (torch.randn((n, self.channels, *self.image_size), generator=generator) * temperature).to(device)
        was_training = self.training
        self.eval()
        try:
            for t in scheduler.timesteps:
                output = self.denoiser_output(x, t, labels)
                if self.diffusion_sampler == "ddim":
                    x = ddim_step(scheduler, output, t, x, self.ddim_eta, generator, temperature)
                else:
                    x = ancestral_step(scheduler, output, t, x, generator, temperature)
        finally:
            self.train(was_training)
        return ((x + 1) / 2).clamp(0, 1)


def ddim_step(scheduler: diffusers.DDIMScheduler, output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, eta: float,
              generator: torch.Generator, temperature: float) -> torch.Tensor:
    """DDIM's update (Song et al. 2021, eq. 12) with σ_t = η·(DDPM's σ_t) of fresh noise, z ~ N(0, temperature² I) drawn
    here from the CPU `generator` like every other sampling draw (diffusers would draw it on the model's device); η = 0
    draws nothing."""
    if eta == 0:
        return scheduler.step(output, t, x, eta=0.0).prev_sample
    z = torch.randn(x.shape, generator=generator, dtype=output.dtype).to(x.device) * temperature
    return scheduler.step(output, t, x, eta=eta, variance_noise=z).prev_sample


def ancestral_step(scheduler: diffusers.DDPMScheduler, output: torch.Tensor, t: torch.Tensor, x: torch.Tensor,
                   generator: torch.Generator, temperature: float) -> torch.Tensor:
    """x_{t-1} = μ(x_t, x̂0) + temperature·σ_t·z (Ho et al. 2020, Algorithm 2), z ~ N(0, I) from `generator`: diffusers'
    step draws z itself and takes no temperature, so z is drawn again from the same state and the difference added."""
    state = generator.get_state()
    previous = scheduler.step(output, t, x, generator=generator).prev_sample
    if temperature == 1 or t == 0:  # the last step adds no noise
        return previous
    z = torch.randn(x.shape, generator=torch.Generator().set_state(state), dtype=output.dtype).to(x.device)
    sigma = scheduler._get_variance(t) ** 0.5  # the step's own σ_t (diffusers has no public name for it)
    return previous + (temperature - 1) * sigma * z
