"""Model families: what one kind of generative model gives the training loop, the evaluation and `vaegen.load`.

The loop owns what every family shares: data, batches, precision, compile and CUDA-graph capture, DDP,
the optimizer step, gradient clipping, EMA, the adversarial head, the perceptual term, checkpoints, resume,
evaluation and best-model export. A family supplies the rest, through two things:

- its module (built from `model.*` by the model registry, vaegen.models.registry), whose `forward(x, labels)` is
  the training forward pass and which draws images after training:
  `generate(n, generator, temperature, class_weights)` (images in [0, 1], randomness from `generator` only;
  conditional modules without `decode` also take `labels=`, one per image), and the attributes `is_conditional` and
  `num_classes`. Latent families also have `latent_dim`,
  `encode`, `decode` and `reconstruct`, which the latent mixture, the reconstruction pictures and the
  gallery's interpolation use; `last_layer` lets the adversarial head weigh its term.
- a `Family` object: the named loss terms of a batch from the module's outputs (on the device, no host
  sync), the validation terms, which terms the epoch line shows, and whether samples can come from a prior.
  A family with a likelihood bound also gives its decoder density and the log importance weights that
  `vaegen test` turns into the IWAE bound and the ELBO (`decoder_likelihood`, `log_weights`).
  A family with an exact density (a flow's) gives log p(x) itself instead (`exact_log_likelihood`), which `vaegen
  test` reports as the test split's NLL.
  A second stage (a prior over a trained first stage's codes) copies the first stage's settings into its config
  (`resolve`) and loads its weights (`prepare`) before training. A two-player family (a GAN) names its players and
  gives each one's objective (`players`, `critic_terms`, `generator_objective`): the loop's `game_step` updates them
  in turns. Any family may name what its epoch rows show going wrong (`trouble`), which the log then says.
  Settings that change only how a trained module samples (a diffusion model's step count) are its `sampling_keys`.
  The gallery describes a trained model in the family's words (`describe`, `temperature_means`).

A family is registered with its modules (`vaegen.models.register_model(name, family)`); no code outside its
module asks which family it is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vaegen.config import Config, LossConfig, ModelConfig
from vaegen.errors import ConfigError
from vaegen.models.losses import DecoderLikelihood


class Family:
    """The training and evaluation behaviour of a kind of model; subclasses override what differs."""

    name = "family"
    terms: tuple[str, ...] = ("loss",)  # training_terms' names, in its order: the objective first
    # what the epoch line shows of the training and validation terms, as {term: label}
    headline: dict[str, str] = {}
    val_headline: dict[str, str] = {}
    has_prior = True  # samples can come from module.generate; else only from a fitted latent mixture
    weighs_beta = True  # the beta schedule weighs one of its terms (the epoch line shows β only then)
    two_player = False  # a critic and a generator take turns on each batch (the loop's game_step), not one objective
    critic_steps = 1  # two-player families: critic updates per generator update
    # model.* keys that change only how the module samples, not its weights: `vaegen test` (its model.* settings) and
    # vaegen.load(..., sampling=) may change them after training
    sampling_keys: tuple[str, ...] = ()
    temperature_means = "standard deviation of z"  # what a sample's temperature scales, in the gallery's words

    def adjustable(self, config: Config) -> tuple[str, ...]:
        """The sampling keys worth a control in the gallery for this trained model (some apply only to some models)."""
        return self.sampling_keys

    def describe(self, config: Config) -> dict[str, str]:
        """The trained model in a few words, as label -> text for the gallery's sidebar: "model", "training" and, where
        its samples come from something other than N(0, I), "sampler"."""
        model, beta = config.model, config.beta
        weighs = f", β {beta.schedule} {beta.max:g}" if self.weighs_beta else ""
        return {"model": f"{model.name}, latent {model.latent_dim}, widths {list(model.widths)}, conditional {model.conditional}",
                "training": f"{config.loss.recon} loss{weighs}, {optimizer_words(config)}"}

    def configured(self, model: ModelConfig) -> Family:
        """The family that trains `model` (model.*): one whose terms or loss depend on the model's settings makes its
        own; the default is the registered one."""
        return self

    def resolve(self, config: Config) -> Config:
        """The config training runs with: a family that builds on another trained model (a second stage) copies that
        model's settings in here and refuses (ConfigError) a missing one; the default changes nothing."""
        return config

    def halvings(self, model: ModelConfig) -> tuple[int, str]:
        """How many times the module halves the image (each side must divide by 2 to that power), and what sets it."""
        return len(model.widths), f"{len(model.widths)} downsampling layers in model.widths"

    def check(self, config: Config) -> None:
        """Refuse (ConfigError) settings this family cannot train with; called before anything is built."""

    def prepare(self, module: nn.Module, config: Config, classes: list[str]) -> None:
        """Fill a newly built module before training starts or resumes, before the EMA copies it (a second stage loads
        its frozen first stage here); the default does nothing."""

    def training_terms(self, outputs, x: torch.Tensor, beta: float | torch.Tensor, loss: LossConfig) -> dict[str, torch.Tensor]:
        """Named loss terms of a batch, per image averaged over it; "loss", the first, is the objective."""
        raise NotImplementedError

    def images(self, outputs) -> torch.Tensor:
        """The images in [0, 1] that the forward pass produced (for the perceptual term and the adversarial head)."""
        raise NotImplementedError(f"the {self.name} family makes no images in its forward pass")

    @torch.no_grad()
    def validation_terms(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator, beta: float, loss: LossConfig
    ) -> dict[str, torch.Tensor]:
        """The terms of a held-out batch, per image averaged over it, with noise from `generator` only."""
        return self.training_terms(model(x, y), x, beta, loss)

    def players(self, module: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Two-player families: (the critic, the generator), the parts of `module` each player's update moves."""
        raise NotImplementedError(f"the {self.name} family trains one objective")

    def critic_terms(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Two-player families: the critic's named terms of a batch (the names `terms` lists), "loss" its objective;
        the generator's weights get no gradient from them."""
        raise NotImplementedError(f"the {self.name} family trains one objective")

    def generator_objective(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Two-player families: the generator's loss on a batch (the loop freezes the critic while it backpropagates)."""
        raise NotImplementedError(f"the {self.name} family trains one objective")

    def trouble(self, history: list[dict]) -> str | None:
        """What the epoch rows so far (oldest first, this process's since it started) show going wrong, in words the
        log gives as a warning; None (the default) when nothing does."""
        return None

    def decoder_likelihood(
        self, model: nn.Module, data: Iterable[tuple[torch.Tensor, torch.Tensor | None]], loss: LossConfig, generator: torch.Generator
    ) -> DecoderLikelihood | None:
        """The density p(x | z) the family's likelihood bounds assume, a free parameter of it fitted on `data` ((x, y)
        batches of training images, noise from `generator`); None (the default): the family has no likelihood."""
        return None

    def log_weights(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, k: int, generator: torch.Generator,
        decoder: DecoderLikelihood, batch_size: int,
    ) -> torch.Tensor:
        """Log importance weights [k, N]: log p(x | z_i, y) + log p(z_i) - log q(z_i | x, y) for k draws z_i ~ q(z | x, y)
        from `generator`, decoding at most about `batch_size` images at a time. Only for families with a likelihood."""
        raise NotImplementedError(f"the {self.name} family has no likelihood bound")

    def exact_log_likelihood(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor | None:
        """log p(x) in nats per image [N] on the 8-bit scale [0, 256)^D, for families whose density is exact (a flow's:
        of the images dequantized with noise from `generator` only); None (the default): the family has none."""
        return None


def optimizer_words(config: Config) -> str:
    """How a run trained, in words: optimizer, learning rate, batch, epochs and seed."""
    optim, train = config.optim, config.train
    return f"{optim.name} lr {optim.lr:g}, batch {train.batch_size}, {train.epochs} epochs, seed {train.seed}"


def require_the_mixture_sampler(config: Config, kind: str, source: str) -> None:
    """Families without a prior sample from the latent mixture alone: refuse any other sampler. `kind` names the
    family ("an autoencoder"), `source` what the mixture is fitted on."""
    if config.sampler.name != "gmm":
        raise ConfigError(
            f"model.name {config.model.name} is {kind}: it has no prior to sample from, so its samples come from a "
            f"mixture fitted on {source}; set sampler.name: gmm."
        )


def reconstructs(model: nn.Module) -> bool:
    """Whether a module encodes and decodes (a latent family's): the mixture sampler, reconstruction pictures and
    interpolations need it."""
    return all(callable(getattr(model, name, None)) for name in ("encode", "decode", "reconstruct"))
