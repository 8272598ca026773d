"""Typed run configuration: YAML in, validated objects out.

Every section is a pydantic model that forbids unknown keys, so a misspelt key is an error that names the key path
and the closest valid key, never a silently ignored setting. pydantic's structured errors become one paragraph
through one formatter (`_explain`). `load_config` is the only way a YAML file becomes a `Config`; each field's
description is its line in docs/config.md (scripts/config_reference.py).
"""

from __future__ import annotations

import difflib
import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from vaegen.errors import ConfigError, plural

# the longest folder or file name, in bytes, that Linux, macOS and Windows file systems hold
NAME_MAX = 255
# a seed goes to torch, numpy and scikit-learn (the latent mixture); the last two take 0 to 2**32 - 1
SEED_MAX = 2**32 - 1
NETWORK_NAMES = ("inception", "inception-64", "efficientnet-lite0", "dinov2")
BACKBONE_NAMES = ("auto", *NETWORK_NAMES, "none")
DEVICE = r"^(auto|cpu|mps|cuda(:\d+)?)$"


class Section(BaseModel):
    # inf and nan are valid YAML floats (.inf, .nan) but no setting means them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_section_is_defaults(cls, raw: Any) -> Any:
        # YAML reads `train:` with nothing under it as null; it means the section's defaults, at any depth
        if not isinstance(raw, dict):
            return raw
        fields = cls.model_fields
        return {key: {} if value is None and key in fields and _takes_only_mappings(fields[key].annotation) else value
                for key, value in raw.items()}

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_or_empty_path(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 (YAML reads yes, no, on, off as true, false) and '' as the current folder
        field = cls.model_fields[info.field_name]
        if isinstance(value, (str, Path)) and _mentions(field.annotation, Path):
            if not str(value).strip():
                default = "" if field.is_required() else ", or leave it out for the default"
                raise ValueError(f"an empty string is no path; give a path{default}")
            _check_path_names(Path(value))
        for position, item in enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]:
            takes = field.annotation if position is None else _items_of(field.annotation)
            if isinstance(item, bool) and not _mentions(takes, bool) and _allowed(takes):
                raise _yes_no(item, _allowed(takes), position)
        return value


def _check_path_names(path: Path) -> None:
    # no file system holds such a name: every use of the path fails (OSError, or ValueError for a NUL)
    if "\0" in str(path):
        raise ValueError("a path cannot hold the NUL character (\\0)")
    for name in path.parts:
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise ValueError(f"the name {name[:20]}... in it is {size} bytes long; "
                             f"file systems hold names of at most {NAME_MAX} bytes")


def _yes_no(value: bool, allowed: str, position: int | None = None) -> PydanticCustomError:
    item = "" if position is None else f"item {position + 1} "
    return PydanticCustomError("yes_no", "{item}is {value}, a yes/no value, where {allowed} is expected",
                               {"item": item, "value": str(value).lower(), "allowed": allowed})


class DataConfig(Section):
    """The training images and how they are read."""

    root: Path = Field(description="ImageFolder (one subfolder per class) or a flat folder of images")
    image_size: tuple[int, int] = Field((64, 64), description="one number (square) or [height, width], in pixels; "
                                                              "each divisible by 2**len(model.widths)")
    channels: Literal[1, 3] = Field(3, description="3 for RGB, 1 for grayscale")
    resize: Literal["center_crop", "stretch"] = Field("center_crop", description="stretch ignores the aspect ratio")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of each class held out for validation")
    hflip: bool = Field(False, description="flip training images left-right at random")
    skip_bad: bool = Field(False, description="leave out unreadable images (with a warning) instead of stopping")
    cache_dir: Path | None = Field(None, description="decoded images; default: $VAEGEN_CACHE or ~/.cache/vaegen")
    on_device: Literal["auto"] | bool = Field("auto", description="keep the decoded uint8 images on the accelerator; "
                                                                  "auto = when they fit in half its free memory")

    @field_validator("image_size", mode="wrap")
    @classmethod
    def _square_or_height_width(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> tuple[int, int]:
        # one number is a square; pydantic's words for other shapes ("a valid tuple") say nothing of image sizes
        try:
            sizes = handler((value, value) if isinstance(value, int) and not isinstance(value, bool) else value)
        except ValidationError as exc:
            # empty values, keys under it and yes/no items have their own sentences
            if value is None or isinstance(value, dict) or any(error["type"] == "yes_no" for error in exc.errors()):
                raise
            sizes = None
        if sizes is None or min(sizes) < 1:
            channels = "; the channel count goes in data.channels" * (isinstance(value, list) and len(value) == 3)
            raise ValueError("an image size is one whole number of pixels for square images (e.g. 64) or "
                             f"[height, width] (e.g. [64, 48]), each at least 1{channels}")
        return sizes


class ModelConfig(Section):
    """The network."""

    name: str = Field("conv_vae", description="a registered model, and with it its family: conv_vae and res_vae (VAEs), "
                                               "conv_ae and res_ae (autoencoders, sampled through sampler.name: gmm)")
    latent_dim: int = Field(128, ge=1, description="size of the latent code")
    widths: tuple[int, ...] = Field((64, 128, 256, 512), min_length=1,
                                    description="encoder channels per stride-2 layer; the decoder mirrors them")
    conditional: Literal["none", "onehot", "embedding"] = Field(
        "none", description="class conditioning: one-hot label planes into the encoder, or a learned vector added to z"
    )
    blocks: int = Field(2, ge=1, description="res_vae only: residual blocks after each change of resolution")

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if min(value) < 1:
            raise ValueError("every width must be a positive channel count")
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _registered(cls, value: Any) -> Any:
        # before Section's yes/no check, so that `name: yes` is answered with the registered models too
        from vaegen.models import MODELS

        names = sorted(MODELS)
        if isinstance(value, bool):
            raise _yes_no(value, f"the name of a registered model ({_either(names)})")
        if value is not None and value not in names:  # None (`name:` with nothing after it) is an empty value
            close = _did_you_mean(str(value), names)
            raise ValueError(f"unknown model; registered models: {', '.join(names)}" + (f" ({close})" if close else ""))
        return value


class LossConfig(Section):
    """The reconstruction term and an optional perceptual term; `beta` weights the KL term."""

    # gaussian: σ-VAE, a Gaussian likelihood whose σ is set optimally per batch (calibrated decoder)
    recon: Literal["mse", "bce", "gaussian"] = Field("mse", description="summed over pixels; gaussian = σ-VAE")
    perceptual: Literal["none", "efficientnet-lite0", "inception"] = Field(
        "none", description="add a feature distance on this frozen ImageNet network; never the eval.backbone"
    )
    perceptual_weight: float = Field(1.0, gt=0.0, description="factor on the perceptual term")


class BetaConfig(Section):
    """β, the weight of the family's regulariser (a VAE's KL, an autoencoder's ½‖z‖²), per epoch: constant, warmup
    (β·min(1, epoch/warmup)), or cyclic (warmup each cycle)."""

    schedule: Literal["constant", "warmup", "cyclic"] = Field("constant", description="how β moves over the epochs")
    max: float = Field(1.0, ge=0.0, description="β once warmed up")
    warmup: int = Field(10, ge=1, description="epochs to ramp from 0 to max")
    cycle: int = Field(20, ge=1, description="cyclic schedule period in epochs")

    @model_validator(mode="after")
    def _warmup_fits_cycle(self) -> BetaConfig:
        if self.schedule == "cyclic" and self.warmup > self.cycle:
            raise ValueError(f"beta.warmup ({self.warmup}) must be at most beta.cycle ({self.cycle}) for the "
                             "cyclic schedule, or beta never reaches beta.max")
        return self


class OptimConfig(Section):
    """The optimizer."""

    name: Literal["adam", "adamw"] = Field("adam", description="adamw decouples the weight decay")
    lr: float = Field(2e-4, gt=0.0, description="learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's decay rates, each in [0, 1)")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay (adam: L2 in the gradient); 0 = off")
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm; null = off")
    # Child 2021 (VDVAE): a rare batch with a huge gradient can undo hours of training; one host sync per step
    skip_grad_norm: float | None = Field(None, gt=0.0, description="skip the update when the gradient norm is "
                                                                   "above this or not finite; null = off")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"Adam's betas are decay rates, each in [0, 1) (the default is [0.9, 0.999]); "
                             f"got {list(betas)}")
        return betas


class TrainConfig(Section):
    """The training loop and its speed settings."""

    epochs: int = Field(100, ge=1, description="passes over the training split")
    batch_size: int = Field(64, ge=1, description="images per step; under torchrun the global batch")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="0 to 2**32 - 1, the seeds numpy and scikit-learn take")
    device: str = Field("auto", pattern=DEVICE, description="auto (cuda, then mps, then cpu), cpu, mps, cuda or cuda:N")
    log_every: int = Field(20, ge=1, description="steps between progress-bar loss updates (the only host syncs)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on CUDA, else fp32")
    channels_last: Literal["auto"] | bool = Field("auto", description="auto = on for CUDA, and on CPU up to 32x32 px")
    compile: Literal["auto"] | bool = Field("auto", description="torch.compile the training step; auto = on for CUDA")
    cudnn_benchmark: Literal["auto"] | bool = Field(
        "auto", description="let cuDNN time its algorithms for each new shape and keep the fastest; auto = on for CUDA"
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode; reduce-overhead replays the compiled step as CUDA graphs"
    )
    cuda_graph: bool = Field(False, description="capture the whole step (forward, loss, backward, optimizer) as one "
                                                "CUDA graph and replay it; CUDA only")
    sync_batchnorm: bool = Field(False, description="under torchrun: BatchNorm statistics over the global batch")
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="decay of a moving average of the weights, which "
                                                                 "evaluation and export use (e.g. 0.999); null = off")

    @model_validator(mode="after")
    def _mode_needs_compile(self) -> TrainConfig:
        if self.compile is False and self.compile_mode != "default":
            raise ValueError(f"train.compile_mode is {self.compile_mode} but train.compile is false, so nothing is "
                             "compiled; set train.compile to auto or true, or remove train.compile_mode")
        return self

    @model_validator(mode="after")
    def _graph_once(self) -> TrainConfig:
        if self.cuda_graph and self.compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"train.cuda_graph captures the whole step as one CUDA graph, and train.compile_mode "
                             f"{self.compile_mode} captures the compiled part again inside it; use one: remove "
                             "train.compile_mode, or set train.cuda_graph: false")
        return self


class SamplerConfig(Section):
    """Where generated images' latent codes come from."""

    # gmm: Ghosh et al. 2020; FID is then reported for it and for the prior
    name: Literal["prior", "gmm"] = Field("prior", description="gmm = a Gaussian mixture fitted on the training "
                                                               "images' posterior means at every evaluation")
    components: int = Field(10, ge=1, description="mixture components (per class for conditional models)")
    covariance: Literal["full", "diag"] = Field("full", description="each mixture component's covariance")


class AdversarialConfig(Section):
    """VAE-GAN refinement: a patch discriminator trained from scratch; its term is weighted adaptively."""

    enabled: bool = Field(False, description="add the adversarial term")
    loss: Literal["hinge", "non_saturating"] = Field("hinge", description="the GAN loss of both players")
    start_epoch: int = Field(5, ge=1, description="first epoch with the adversarial term (the decoder learns alone)")
    weight: float = Field(0.5, gt=0.0, description="factor on the adaptive weight (gradient-norm ratio at the decoder)")
    lr: float = Field(2e-4, gt=0.0, description="the discriminator's Adam learning rate")
    widths: tuple[int, ...] = Field((64, 128, 256), min_length=1, description="channels per stride-2 layer")


class EvalConfig(Section):
    """Evaluation during training: sample grids and FID/KID."""

    every: int = Field(5, ge=1, description="epochs between evaluations (grids, FID/KID)")
    num_grid: int = Field(64, ge=1, description="images in each grid")
    backbone: Literal[BACKBONE_NAMES] = Field("auto", description="feature network for FID/KID; auto = inception if "
                                                                  "its weights are here, else efficientnet-lite0")
    inception_weights: Path | None = Field(None, description="weights-inception-2015-12-05-6726825d.pth, if not in "
                                                             "the torch cache")
    extra_backbones: tuple[Literal[NETWORK_NAMES], ...] = Field(
        (), description="also score the same samples on these networks (required with loss.perceptual)"
    )
    num_samples: int = Field(5000, ge=2, description="generated images per FID/KID evaluation")
    reference: Literal["train", "val", "all"] = Field("train", description="real images the samples are compared with")
    batch_size: Literal["auto"] | PositiveInt = Field("auto", description="images per decoder/backbone batch; "
                                                                          "auto = 1000 on CUDA, 64 elsewhere")
    kid_subset_size: int = Field(1000, ge=2, description="images per KID subset")
    temperature: float = Field(1.0, gt=0.0, description="prior temperature for FID samples")


class LoggingConfig(Section):
    """Experiment tracking besides TensorBoard."""

    wandb: Literal["disabled", "offline", "online"] = Field("disabled", description="Weights & Biases logging")
    wandb_project: str = Field("vaegen", description="the W&B project")


class OutputConfig(Section):
    """Where runs go and which epoch is the best."""

    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=NAME_MAX,
                                 description="the run's folder name; default: <config name>-<date>-<time>")
    logs_dir: Path = Field(Path("logs"), description="runs' folders: checkpoints, metrics, pictures")
    best_dir: Path = Field(Path("best_models"), description="each run's best model")
    # val_nelbo = recon + KL does not move with the β schedule, so a β = 0 epoch cannot win by dropping the KL
    select: Literal["fid", "val_nelbo", "val_recon", "val_loss"] = Field(
        "fid", description="picks the best epoch (lower is better): eval.backbone's FID, recon + KL, recon, recon+β·KL"
    )
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints/last.pt writes, more while the "
                                                       "previous write is still going (the last epoch always writes)")


class Config(Section):
    """`vaegen train`'s config."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    beta: BetaConfig = BetaConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    sampler: SamplerConfig = SamplerConfig()
    adversarial: AdversarialConfig = AdversarialConfig()
    logging: LoggingConfig = LoggingConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        layers = len(self.model.widths)
        factor = 2**layers
        for axis, size in zip(("height", "width"), self.data.image_size):
            if size % factor:
                lower, upper = size // factor * factor, (size // factor + 1) * factor
                raise ValueError(f"data.image_size {axis} {size} is not divisible by {factor} (2**{layers} for "
                                 f"{layers} downsampling layers in model.widths); use "
                                 + (f"{lower} or {upper}" if lower else f"{upper}"))
        if self.output.select.startswith("val_") and self.data.val_fraction == 0:
            raise ValueError(f"output.select is {self.output.select} but data.val_fraction is 0, so there is no "
                             "validation split to select on; set data.val_fraction to e.g. 0.1")
        if self.output.select == "fid" and self.eval.backbone == "none":
            raise ValueError("output.select is fid but eval.backbone is none, so no FID is measured; choose a backbone "
                             "(auto, efficientnet-lite0, inception) or select on val_nelbo")
        from vaegen.perceptual import evaluation_network_problem

        check_extra_backbones(self.eval.backbone, self.eval.extra_backbones, "eval.")
        # "auto" is checked once resolved, in train
        problem = evaluation_network_problem(self.loss.perceptual, self.eval.backbone, self.eval.extra_backbones)
        if problem:
            raise ValueError(problem)
        if self.eval.reference == "val" and self.data.val_fraction == 0:
            raise ValueError("eval.reference is val but data.val_fraction is 0; use eval.reference: train or all")
        if self.train.cuda_graph:
            self._check_step_replays()
        return self

    def _check_step_replays(self) -> None:
        """A replayed graph repeats the device work of one step: nothing in it may need the host."""
        host_parts = [
            ("train.precision fp16 (its loss scaler reads the gradients' inf checks on the host)",
             self.train.precision == "fp16"),
            ("optim.skip_grad_norm (reads the gradient norm on the host every step)",
             self.optim.skip_grad_norm is not None),
            ("train.ema (its decay changes with a step counter kept on the host)", self.train.ema is not None),
            ("adversarial.enabled (the discriminator joins the step at a later epoch)", self.adversarial.enabled),
        ]
        clashes = [name for name, clash in host_parts if clash]
        if clashes:
            many = len(clashes) > 1
            raise ValueError(f"train.cuda_graph replays one recorded step, but {'; and '.join(clashes)} "
                             f"{'need' if many else 'needs'} the host between steps; set train.cuda_graph: false, "
                             f"or turn {'them' if many else 'it'} off")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class InterpolationConfig(Section):
    """interpolation.png: spherical latent interpolations between pairs of validation images."""

    rows: int = Field(6, ge=1, description="pairs of validation images")
    steps: int = Field(10, ge=2, description="images per row, both ends included")


class TestConfig(Section):
    """`vaegen test`: what to load, what to compare it with, what to draw."""

    __test__ = False  # not a pytest test class, despite the name

    checkpoint: Path | None = Field(None, description="best_models/<run> (or --checkpoint)")
    data_root: Path | None = Field(None, description="default: the data.root the model was trained on")
    cache_dir: Path | None = Field(None, description="decoded images; default: the training run's data.cache_dir")
    skip_bad: bool | None = Field(None, description="leave out unreadable images; default: the run's data.skip_bad")
    split: Literal["train", "val", "all"] = Field("val", description="the images scored and reconstructed")
    backbone: Literal[BACKBONE_NAMES] = Field("auto", description="feature network for FID/KID, as eval.backbone")
    inception_weights: Path | None = Field(None, description="weights-inception-2015-12-05-6726825d.pth, if not in "
                                                             "the torch cache")
    extra_backbones: tuple[Literal[NETWORK_NAMES], ...] = Field((), description="also score the samples on these")
    num_samples: int = Field(5000, ge=2, description="generated images for FID/KID")
    batch_size: Literal["auto"] | PositiveInt = Field("auto", description="images per decoder/backbone batch; "
                                                                          "auto = 1000 on CUDA, 64 elsewhere")
    kid_subset_size: int = Field(1000, ge=2, description="images per KID subset")
    grid: int = Field(8, ge=1, description="samples.png holds grid x grid samples (conditional models: about as many, "
                                           "one labelled block per class)")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seeds the samples; 0 to 2**32 - 1")
    temperature: float = Field(1.0, gt=0.0, description="prior temperature of the samples")
    sampler: Literal["auto", "prior", "gmm"] = Field("auto", description="auto = the checkpoint's latent mixture if "
                                                                         "it has one; gmm fits one now if it has none")
    interpolation: InterpolationConfig = InterpolationConfig()
    output_dir: Path | None = Field(None, description="default: <checkpoint>/test")
    device: str = Field("auto", pattern=DEVICE, description="auto (cuda, then mps, then cpu), cpu, mps, cuda or cuda:N")

    @model_validator(mode="after")
    def _check(self) -> TestConfig:
        check_extra_backbones(self.backbone, self.extra_backbones)
        return self


def check_extra_backbones(backbone: str, extras: tuple[str, ...], prefix: str = "") -> None:
    """The second opinions must be other networks than the first, each scored once."""
    if extras and backbone == "none":
        raise ValueError(f"{prefix}extra_backbones is set but {prefix}backbone is none, so nothing is scored; "
                         "choose a backbone or drop the extras")
    if len(set(extras)) != len(extras) or backbone in extras:
        raise ValueError(f"{prefix}extra_backbones {list(extras)} repeats a network ({prefix}backbone is {backbone}); "
                         "list each once")


# ---------------------------------------------------------------------------------------
# Loading and overrides


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Read YAML `path` (or take `base`), apply `--set key.path=value` overrides, validate."""
    raw = read_yaml(path) if path is not None else dict(base or {})
    empty = path is not None and not raw
    for item in overrides:
        apply_override(raw, item)
    if empty and "data" not in raw:  # rather than "missing required key `data`", as if the rest were there
        raise ConfigError(
            f"{path} {_nothing_in(path)}: a config needs at least the folder of training images, "
            f"`data: {{root: path/to/images}}` (or --set data.root=path/to/images); every other key has a default, "
            f"and configs/quickstart.yaml is a complete example."
        )
    return config_from_dict(raw, _source(path, overrides, "the config"))


def load_test_config(path: str | Path | None, overrides: list[str] = ()) -> TestConfig:
    raw = read_yaml(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw, _source(path, overrides, "the test config"), schema=TestConfig)


def _source(path: str | Path | None, overrides: list[str], default: str) -> str:
    # a problem may come from a --set value rather than the file
    return (str(path) if path is not None else default) + (" with its --set values" if overrides else "")


def _nothing_in(path: str | Path) -> str:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    if not any(lines):
        return "is empty"
    return "holds only comments" if all(not line or line.startswith("#") for line in lines) else "holds no settings"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        _check_path_names(path)
    except ValueError as exc:
        message = f"config file {path} cannot exist: {exc}. Pass an existing YAML file with --config."
        raise ConfigError(message) from None
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}. Pass an existing YAML file with --config "
                          f"(the repository's examples are in configs/).")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}), so it cannot be a YAML "
                          f"config; pass the .yaml file.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}. Check "
                          f"indentation and that every `key: value` pair has a space after the colon.") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data:, model:, train:, ...), "
                          f"not a {type(raw).__name__}.")
    return raw


def apply_override(raw: dict, item: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML."""
    key_path, sep, text = item.partition("=")
    if not sep or not all(key_path.strip().split(".")):
        raise ConfigError(f"--set {item!r} is not of the form key.path=value, e.g. --set train.epochs=5.")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())  # PyYAML's report spans lines with a caret drawing
        raise ConfigError(f"--set {item!r}: the value {text!r} is not valid YAML ({reason}); quote the whole --set "
                          f"argument in the shell.") from exc
    set_key_path(raw, key_path.strip(), value, where=f"--set {item!r}")


def set_key_path(raw: dict, key_path: str, value: Any, where: str = "") -> None:
    """raw["a"]["b"] = value for key_path "a.b", creating sections on the way."""
    keys = key_path.split(".")
    node = raw
    for depth, key in enumerate(keys[:-1]):
        if node.get(key) is None:  # `model:` with nothing under it is an empty section in YAML
            node[key] = {}
        if not isinstance(node[key], dict):
            raise ConfigError(f"{where or key_path}: `{'.'.join(keys[: depth + 1])}` is a value, not a section, so "
                              f"it has no `{keys[depth + 1]}`.")
        node = node[key]
    node[keys[-1]] = value


def check_key_path(key_path: str, source: str, schema: type[Section] = Config) -> None:
    """Raise the config's unknown-key error for a key path that names no setting of `schema`."""
    keys = key_path.split(".")
    node: Any = schema
    for depth, key in enumerate(keys):
        if not _is_section(node):
            raise ConfigError(f"{source}: `{'.'.join(keys[:depth])}` is a value, not a section, so it has no `{key}`.")
        if key not in node.model_fields:
            unknown = {"type": "extra_forbidden", "loc": tuple(keys[: depth + 1])}
            raise ConfigError(f"{source}: {_explain([unknown], schema)[0]}")
        node = node.model_fields[key].annotation
    if _is_section(node):
        fields = ", ".join(f"{key_path}.{name}" for name in node.model_fields)
        raise ConfigError(f"{source}: `{key_path}` is a whole section; name one setting in it ({fields}).")


def config_from_dict(raw: dict, source: str = "the config", schema: type[Section] = Config) -> Config:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        command = _meant_for(raw, schema)
        if command is not None:  # one line, rather than an unknown-key error for each of its sections
            raise ConfigError(
                f"{source} is a `{command}` config (top-level keys {', '.join(sorted(map(str, raw)))}); "
                f"pass it to `{command} --config`, or give this command one like those in configs/."
            ) from None
        problems = _explain(exc.errors(), schema)
        raise ConfigError(f"{source} has {plural(len(problems), 'problem')}: " + " ".join(problems)) from None


def _meant_for(raw: dict, schema: type[Section]) -> str | None:
    """The command whose config `raw` is, when its top-level keys are another command's, not `schema`'s."""
    unknown = set(raw) - set(schema.model_fields)
    if len(unknown) < 2:  # one stray key is a typo, answered key by key
        return None
    if unknown & {"base", "space"}:  # a sweep (vaegen.tune builds its schema on top of this module)
        return "vaegen tune"
    for command, other in (("vaegen train", Config), ("vaegen test", TestConfig)):
        if other is not schema and unknown <= set(other.model_fields):
            return command
    return None


# ---------------------------------------------------------------------------------------
# pydantic's errors as sentences: the key path, the value, what is allowed


def _explain(errors: list[dict], schema: type[BaseModel]) -> list[str]:
    """One sentence per setting from pydantic's structured errors (`type`, `loc`, `input`, `ctx`, `msg`)."""
    groups: dict[tuple, tuple[tuple, list[dict]]] = {}
    for error in errors:
        where = _locate(error["loc"], schema)
        groups.setdefault(where[:2], (where, []))[1].append(error)
    return [_sentence(where, group) for where, group in groups.values()]


def _locate(loc: tuple, schema: type[BaseModel]) -> tuple[tuple[str, ...], int | None, Any, Any]:
    """(key path, list item, the section holding the key, what the key takes) of a pydantic error location."""
    keys, item, parent, annotation = [], None, None, schema
    for part in loc:
        if isinstance(part, int):
            item = part
        elif _is_section(annotation):
            field = annotation.model_fields.get(part)
            parent, annotation = annotation, field.annotation if field is not None else None
            keys.append(part)
        elif get_origin(annotation) is dict:  # a free key, such as a sweep's `space: {optim.lr: ...}`
            parent, annotation = None, get_args(annotation)[1]
            keys.append(part)
        else:  # past a setting, pydantic names the member of a union that failed (`literal['auto']`, `bool`)
            break
    return tuple(keys), item, parent, annotation


WRONG_KIND = ("_type", "_parsing", "literal_error")  # pydantic's error types for a value of another kind


def _pick(errors: list[dict], takes: Any) -> dict:
    """pydantic reports a failed `A | B` once per alternative: a bound broken by a value of the right kind
    (eval.batch_size: 0) speaks for the setting; a value of the wrong kind is told what the setting takes."""
    bound = next((error for error in errors if not error["type"].endswith(WRONG_KIND)), None)
    allowed = _allowed(takes)
    return bound or ({**errors[0], "msg": f"Input should be {allowed}"} if allowed else errors[0])


def _sentence(where: tuple, errors: list[dict]) -> str:
    keys, item, parent, annotation = where
    takes = annotation if item is None else _items_of(annotation)
    error = _pick(errors, takes)
    key, kind, value = ".".join(keys), error["type"], error.get("input")
    at = "" if item is None else f" item {item + 1}"
    message = (str(error["ctx"]["error"]) if kind == "value_error" else error.get("msg", "")).rstrip(".")
    field = parent.model_fields.get(keys[-1]) if parent is not None and item is None else None
    default = None if field is None or field.is_required() else field.get_default(call_default_factory=True)
    default = "" if default is None else _yaml(default)
    if kind == "extra_forbidden":
        valid, scope = list(parent.model_fields), f"`{'.'.join(keys[:-1])}`" if keys[:-1] else "the top level"
        hint = _did_you_mean(keys[-1], valid) or f"valid keys in {scope}: {', '.join(valid)}."
        return f"unknown key `{key}`; {hint}"
    if kind == "missing":
        return f"`{key}` has too few values:{at} is missing." if at else f"missing required key `{key}`."
    if kind == "yes_no":
        return f"`{key}` {message}."
    if _is_section(annotation) and value is not None and not isinstance(value, dict):  # `data: data/apples_sample`
        fields = annotation.model_fields
        first = next((name for name, info in fields.items() if info.is_required()), next(iter(fields)))
        fits = fields[first].is_required() and isinstance(value, str)  # `data: x` means `data: {root: x}`
        example = _yaml({first: value}) if fits else f"{{{first}: ...}}"
        given = "a list" if isinstance(value, list) else "a single value"
        return (f"`{key}` is a section of keys ({', '.join(fields)}), not {given} ({_yaml(value)}); "
                f"write it as e.g. `{keys[-1]}: {example}`.")
    if isinstance(value, dict) and _allowed(takes):  # --set train.epochs.x=1
        what = "a list" if _items_of(takes) is not None else "a single value"
        return (f"`{key}`{at} is {what} with no keys under it, not a mapping ({_yaml(value)}); give it a value itself"
                + (f" (the default is {default})." if default else "."))
    if kind == "value_error" and isinstance(value, dict):  # a section's own check: its dict would bury the message
        return f"`{key}`: {message}." if key else f"{message}."
    if value is None:  # `key:` with nothing after it, or --set key=
        what = f" ({field.description})" if field is not None and field.description else ""
        instead = f", or leave it out for the default, {default}" if default else ""
        return f"`{key}`{at} is empty: give it a value{what}{instead}."
    shown = _yaml(value) if isinstance(value, (list, tuple)) else repr(value)  # [64, null], not [64, None]
    return f"`{key}`{at} = {shown} is not allowed: {message}."


def _did_you_mean(word: str, valid: list[str]) -> str | None:
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    return f"did you mean `{close[0]}`?" if close else None


def _yaml(value: Any) -> str:
    """`value` as it is written in a config file (true, not True; {root: x})."""
    plain = json.loads(json.dumps(value, default=str))  # tuples as lists, paths as text
    try:
        return yaml.safe_dump(plain, default_flow_style=True, width=1_000).strip().removesuffix("...").strip()
    except yaml.YAMLError:
        return repr(value)


# ---------------------------------------------------------------------------------------
# What a setting takes, read from its annotation


_KINDS = {int: "a number", float: "a number", str: "a name", Path: "a path", tuple: "a list", list: "a list"}


def _allowed(annotation: Any) -> str | None:
    """What a setting takes, in words ("a number", "'none', 'onehot' or 'embedding'", "a number or 'auto'"); None for
    sections and mappings, whose own errors say what they take."""
    kinds, choices = [], []
    for part in _alternatives(annotation):
        origin = get_origin(part)
        if part is Any or _is_section(part) or origin is dict:
            return None
        if part is bool or origin is Literal:
            choices += ["true", "false"] if part is bool else [repr(choice) for choice in get_args(part)]
        elif (origin or part) in _KINDS:
            kinds.append(_KINDS[origin or part])
    words = list(dict.fromkeys(kinds)) + ([_either(choices)] if choices else [])
    return _either(words) if words else None


def _either(words: list[str]) -> str:
    """'a', 'a or b', 'a, b or c': as pydantic lists choices."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _alternatives(annotation: Any) -> list[Any]:
    """The types a setting takes, with unions, `| None` and constraints (PositiveInt) unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _alternatives(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [part for arg in get_args(annotation) for part in _alternatives(arg)]
    return [] if annotation is type(None) else [annotation]


def _items_of(annotation: Any) -> Any:
    """The item type of a list setting (tuple[int, ...], tuple[float, float]); None when it takes no list."""
    lists = [part for part in _alternatives(annotation) if get_origin(part) in (tuple, list)]
    return (get_args(lists[0]) or (Any,))[0] if lists else None


def _mentions(annotation: Any, kind: type) -> bool:
    return annotation is kind or any(_mentions(arg, kind) for arg in get_args(annotation))


def _takes_only_mappings(annotation: Any) -> bool:
    return _is_section(annotation) or get_origin(annotation) is dict


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
