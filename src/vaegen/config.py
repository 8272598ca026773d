"""Typed run configuration: YAML in, validated objects out.

Every section is a pydantic model that forbids unknown keys, so a misspelt key is an
error that names the key path and the closest valid key, never a silently ignored
setting. `load_config` is the only way a YAML file becomes a `Config`.
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


class Section(BaseModel):
    # inf and nan are valid YAML floats (.inf, .nan) but no setting means them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_section_is_defaults(cls, raw: Any) -> Any:
        # YAML reads a key with nothing under it (`train:`, `tune: {resources: }`) as null, not as an empty mapping.
        # Whoever writes a section header and no keys means that section with every default, as if it were left out,
        # so a section, or a mapping such as a sweep's `overrides:`, reads null as {} at any depth.
        if not isinstance(raw, dict):
            return raw
        fields = cls.model_fields
        return {key: {} if value is None and key in fields and _takes_only_mappings(fields[key].annotation) else value
                for key, value in raw.items()}

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_or_empty_path(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for a number (and YAML reads an unquoted yes, no, on or off as true or false),
        # and '' as the current folder: in a config each is a typo (epochs: true, root: ''), never the value meant.
        # Checked per field, so each is named by its key.
        field = cls.model_fields[info.field_name]
        if isinstance(value, str) and not value.strip() and _mentions(field.annotation, Path):
            raise ValueError("an empty string is no path; give a path" + ("" if field.is_required() else ", or leave it out for the default"))
        if isinstance(value, (str, Path)) and _mentions(field.annotation, Path):
            _check_path_names(Path(value))
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for position, item in items:
            takes = field.annotation if position is None else _item_annotation(field.annotation, position)
            expected = _expected(takes) if isinstance(item, bool) else None
            if expected:
                raise _yes_no(item, expected, position)
        return value


# the longest folder or file name, in bytes, that Linux, macOS and Windows file systems hold
NAME_MAX = 255


def _check_path_names(path: Path) -> None:
    # no file system holds such a name: every use of the path (even asking whether it exists) fails, with an OSError
    # (a name too long) or a ValueError (a NUL character, which YAML writes as "\0")
    if "\0" in str(path):
        raise ValueError("a path cannot hold the NUL character (\\0)")
    for name in path.parts:
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise ValueError(f"the name {name[:20]}... in it is {size} bytes long; file systems hold names of at most {NAME_MAX} bytes")


def _yes_no(value: bool, expected: str, position: int | None = None) -> PydanticCustomError:
    """The error for a yes/no value (of item `position` of a list) where `expected` goes; _describe names its key."""
    which = "" if position is None else f"item {position + 1} "
    what = f"{which}is {str(value).lower()}, a yes/no value, where {expected} is expected"
    return PydanticCustomError("yes_no", "{what}", {"what": what})


def _mentions(annotation: Any, kind: type) -> bool:
    return annotation is kind or any(_mentions(arg, kind) for arg in get_args(annotation))


def _alternatives(annotation: Any) -> list[Any]:
    """The types a field takes, with unions, `| None` and constraints (PositiveInt) unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _alternatives(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [part for arg in get_args(annotation) for part in _alternatives(arg)]
    return [] if annotation is type(None) else [annotation]


def _either(words: list[str]) -> str:
    """'a', 'a or b', 'a, b or c': pydantic's way of listing choices, which the other errors show."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


_KINDS = {int: "a number", float: "a number", str: "a name", Path: "a path"}


def _expected(annotation: Any, yes_no: bool = False) -> str | None:
    """What a field takes, in words ("a number", "'none', 'onehot' or 'embedding'", "a number or 'auto'"); None
    when a yes/no value is one of them (unless `yes_no`: then they are "true or false"), or the field takes a
    section or mapping (their own errors say what they take)."""
    kinds, choices = [], []
    for part in _alternatives(annotation):
        if part is bool and yes_no:
            choices += ["true", "false"]
            continue
        if part is bool or part is Any or _is_section(part) or get_origin(part) is dict:
            return None
        if get_origin(part) is Literal:
            choices += [repr(choice) for choice in get_args(part)]
        elif get_origin(part) in (tuple, list):
            kinds.append("a list")
        elif part in _KINDS:
            kinds.append(_KINDS[part])
    words = list(dict.fromkeys(kinds)) + ([_either(choices)] if choices else [])
    return _either(words) if words else None


def _item_annotation(annotation: Any, position: int) -> Any:
    """The type of item `position` of a list field (tuple[int, int], tuple[int, ...]); Any when it is no list field."""
    for part in _alternatives(annotation):
        if get_origin(part) in (tuple, list):
            args = [arg for arg in get_args(part) if arg is not Ellipsis]
            if not args:
                return Any
            return args[position] if len(args) > 1 and position < len(args) else args[0]
    return Any


class DataConfig(Section):
    root: Path = Field(description="ImageFolder (one subfolder per class) or a flat folder of images")
    image_size: tuple[int, int] = Field(
        (64, 64), description="int or [height, width]; both divisible by 2**len(model.widths)"
    )
    channels: Literal[1, 3] = 3
    resize: Literal["center_crop", "stretch"] = "center_crop"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    hflip: bool = False
    skip_bad: bool = False
    cache_dir: Path | None = Field(None, description="default: $VAEGEN_CACHE or ~/.cache/vaegen")
    on_device: Literal["auto"] | bool = Field(
        "auto", description="keep the decoded uint8 images on the accelerator; auto = when they fit in half its free memory"
    )

    @field_validator("image_size", mode="wrap")
    @classmethod
    def _square_or_height_width(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> tuple[int, int]:
        # one number is a square; pydantic's own words for anything else ("Input should be a valid tuple",
        # "at most 2 items") say neither what an image size is nor how to write one
        try:
            sizes = handler((value, value) if isinstance(value, int) and not isinstance(value, bool) else value)
        except ValidationError as exc:
            # yes/no values, empty values and keys under image_size have their own messages (Section, _describe)
            if value is None or isinstance(value, dict) or any(error["type"] == "yes_no" for error in exc.errors()):
                raise
            sizes = None
        if sizes is None or min(sizes) < 1:
            channels = "; the channel count goes in data.channels" if isinstance(value, (list, tuple)) and len(value) == 3 else ""
            raise ValueError(
                "an image size is one whole number of pixels for square images (e.g. 64) or [height, width] "
                f"(e.g. [64, 48]), each at least 1{channels}"
            )
        return sizes


class ModelConfig(Section):
    name: str = "conv_vae"
    latent_dim: int = Field(128, ge=1)
    widths: tuple[int, ...] = Field((64, 128, 256, 512), min_length=1)
    conditional: Literal["none", "onehot", "embedding"] = "none"
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
        # before Section's yes/no check, so that `name: yes` (read as true) is answered with the models too
        from vaegen.models import MODELS

        names = sorted(MODELS)
        if isinstance(value, bool):
            raise _yes_no(value, f"the name of a registered model ({_either(names)})")
        if value is not None and value not in names:  # None: `name:` with nothing after it, which _describe answers
            close = _did_you_mean(str(value), names)
            raise ValueError(f"unknown model; registered models: {', '.join(names)}" + (f" ({close})" if close else ""))
        return value


class LossConfig(Section):
    # gaussian: σ-VAE, a Gaussian likelihood whose σ is set optimally per batch (calibrated decoder)
    recon: Literal["mse", "bce", "gaussian"] = "mse"
    perceptual: Literal["none", "efficientnet-lite0", "inception"] = Field(
        "none", description="add a feature distance on this frozen ImageNet network; never the eval.backbone"
    )
    perceptual_weight: float = Field(1.0, gt=0.0)


class BetaConfig(Section):
    schedule: Literal["constant", "warmup", "cyclic"] = "constant"
    max: float = Field(1.0, ge=0.0)
    warmup: int = Field(10, ge=1, description="epochs to ramp from 0 to max")
    cycle: int = Field(20, ge=1, description="cyclic schedule period in epochs")

    @model_validator(mode="after")
    def _warmup_fits_cycle(self) -> BetaConfig:
        if self.schedule == "cyclic" and self.warmup > self.cycle:
            raise ValueError(
                f"beta.warmup ({self.warmup}) must be at most beta.cycle ({self.cycle}) for the "
                "cyclic schedule, or beta never reaches beta.max"
            )
        return self


class OptimConfig(Section):
    name: Literal["adam", "adamw"] = "adam"
    lr: float = Field(2e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm; null = off")
    # Child 2021 (VDVAE): a rare batch with a huge gradient can undo hours of training in one update;
    # such updates are dropped instead. Deciding needs the norm on the host: one sync per step.
    skip_grad_norm: float | None = Field(
        None, gt=0.0, description="skip the update when the gradient norm is above this (or not finite); null = off"
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"Adam's betas are decay rates, each in [0, 1) (the default is [0.9, 0.999]); got {list(betas)}")
        return betas


# a seed goes to torch, numpy and scikit-learn (the latent mixture); the last two take 0 to 2**32 - 1
SEED_MAX = 2**32 - 1


class TrainConfig(Section):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX, description="0 to 2**32 - 1, the seeds numpy and scikit-learn take")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    log_every: int = Field(20, ge=1, description="steps between progress-bar loss updates (the only host syncs)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 elsewhere")
    channels_last: Literal["auto"] | bool = Field("auto", description="auto = on for CUDA, and on CPU for images of at most 32x32 px")
    compile: Literal["auto"] | bool = Field("auto", description="torch.compile the training step; auto = on for CUDA")
    cudnn_benchmark: Literal["auto"] | bool = Field(
        "auto", description="let cuDNN time its convolution algorithms for each new shape and keep the fastest; auto = on for CUDA"
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode when the step is compiled; reduce-overhead replays it as CUDA graphs"
    )
    cuda_graph: bool = Field(
        False,
        description="capture the whole step (forward, loss, backward, optimizer) once as a CUDA graph and replay it; CUDA only, opt-in until measured",
    )
    sync_batchnorm: bool = Field(False, description="under torchrun: BatchNorm statistics over the global batch, not each process's share")
    ema: float | None = Field(
        None, gt=0.0, lt=1.0, description="decay of a moving average of the weights used to evaluate and export (e.g. 0.999); null = off"
    )

    @model_validator(mode="after")
    def _mode_needs_compile(self) -> TrainConfig:
        if self.compile is False and self.compile_mode != "default":
            raise ValueError(
                f"train.compile_mode is {self.compile_mode} but train.compile is false, so nothing is compiled; "
                "set train.compile to auto or true, or remove train.compile_mode"
            )
        return self

    @model_validator(mode="after")
    def _graph_once(self) -> TrainConfig:
        if self.cuda_graph and self.compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"train.cuda_graph captures the whole step as one CUDA graph, and train.compile_mode {self.compile_mode} "
                "captures the compiled part again inside it; use one: remove train.compile_mode, or set train.cuda_graph: false"
            )
        return self


class SamplerConfig(Section):
    """Where generated images' latent codes come from."""

    # gmm: a Gaussian mixture fitted on the training images' posterior means at every evaluation
    # (Ghosh et al. 2020); FID is then reported for it and for the prior
    name: Literal["prior", "gmm"] = "prior"
    components: int = Field(10, ge=1, description="mixture components (per class for conditional models)")
    covariance: Literal["full", "diag"] = "full"


class AdversarialConfig(Section):
    """VAE-GAN refinement: a patch discriminator trained from scratch; its term is weighted adaptively."""

    enabled: bool = False
    loss: Literal["hinge", "non_saturating"] = "hinge"
    start_epoch: int = Field(5, ge=1, description="first epoch with the adversarial term; the decoder learns alone before it")
    weight: float = Field(0.5, gt=0.0, description="factor on the adaptive weight (gradient-norm ratio at the decoder's last layer)")
    lr: float = Field(2e-4, gt=0.0, description="the discriminator's Adam learning rate")
    widths: tuple[int, ...] = Field((64, 128, 256), min_length=1, description="discriminator channels per stride-2 layer")


NETWORK_NAMES = ("inception", "inception-64", "efficientnet-lite0", "dinov2")
BACKBONE_NAMES = ("auto", *NETWORK_NAMES, "none")


class EvalConfig(Section):
    every: int = Field(5, ge=1, description="epochs between evaluations (grids, FID/KID)")
    num_grid: int = Field(64, ge=1, description="images in each grid")
    backbone: Literal[BACKBONE_NAMES] = Field(
        "auto", description="feature network for FID/KID; auto = inception if its weights are here, else efficientnet-lite0"
    )
    inception_weights: Path | None = Field(None, description="weights-inception-2015-12-05-6726825d.pth, if not in the torch cache")
    extra_backbones: tuple[Literal[NETWORK_NAMES], ...] = Field(
        (), description="also score the same samples on these networks (a second opinion; required with loss.perceptual)"
    )
    num_samples: int = Field(5000, ge=2, description="generated images per FID/KID evaluation")
    reference: Literal["train", "val", "all"] = Field("train", description="real images the samples are compared with")
    batch_size: Literal["auto"] | PositiveInt = Field("auto", description="images per decoder/backbone batch; auto = 1000 on CUDA, 64 elsewhere")
    kid_subset_size: int = Field(1000, ge=2)
    temperature: float = Field(1.0, gt=0.0, description="prior temperature for FID samples")


class LoggingConfig(Section):
    wandb: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "vaegen"


class OutputConfig(Section):
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=NAME_MAX)  # a folder's name
    logs_dir: Path = Path("logs")
    best_dir: Path = Path("best_models")
    # val_nelbo = recon + KL: unlike val_loss (recon + β·KL) it does not move with the β
    # schedule, so a cyclic schedule's β = 0 epochs cannot win by dropping the KL term
    # fid = the Fréchet distance of eval.backbone (lower is better), measured every eval.every epochs
    select: Literal["fid", "val_nelbo", "val_recon", "val_loss"] = "fid"
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints/last.pt writes, more while the previous write is still going (the last epoch always writes)")


class Config(Section):
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
        factor = 2 ** len(self.model.widths)
        for axis, size in zip(("height", "width"), self.data.image_size):
            if size % factor:
                lower, upper = size // factor * factor, (size // factor + 1) * factor
                options = f"{lower} or {upper}" if lower else f"{upper}"
                raise ValueError(
                    f"data.image_size {axis} {size} is not divisible by {factor} "
                    f"(2**{len(self.model.widths)} for {len(self.model.widths)} downsampling layers "
                    f"in model.widths); use {options}"
                )
        if self.output.select.startswith("val_") and self.data.val_fraction == 0:
            raise ValueError(
                f"output.select is {self.output.select} but data.val_fraction is 0, so there is no "
                f"validation split to select on; set data.val_fraction to e.g. 0.1"
            )
        if self.output.select == "fid" and self.eval.backbone == "none":
            raise ValueError(
                "output.select is fid but eval.backbone is none, so no FID is measured; choose a backbone "
                "(auto, efficientnet-lite0, inception) or select on val_nelbo"
            )
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
        host_parts = {
            "train.precision fp16 (its loss scaler reads the gradients' inf checks on the host)": self.train.precision == "fp16",
            "optim.skip_grad_norm (reads the gradient norm on the host every step)": self.optim.skip_grad_norm is not None,
            "train.ema (its decay changes with a step counter kept on the host)": self.train.ema is not None,
            "adversarial.enabled (the discriminator joins the step at a later epoch)": self.adversarial.enabled,
        }
        clashes = [name for name, clash in host_parts.items() if clash]
        if clashes:
            raise ValueError(
                f"train.cuda_graph replays one recorded step, but {'; and '.join(clashes)} {'need' if len(clashes) > 1 else 'needs'} "
                f"the host between steps; set train.cuda_graph: false, or turn {'them' if len(clashes) > 1 else 'it'} off"
            )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class InterpolationConfig(Section):
    rows: int = Field(6, ge=1, description="pairs of validation images")
    steps: int = Field(10, ge=2, description="images per row, both ends included")


class TestConfig(Section):
    """`vaegen test`: what to load, what to compare it with, what to draw."""

    __test__ = False  # not a pytest test class, despite the name

    checkpoint: Path | None = Field(None, description="best_models/<run> (or --checkpoint)")
    data_root: Path | None = Field(None, description="default: the data.root the model was trained on")
    cache_dir: Path | None = None
    skip_bad: bool | None = Field(None, description="leave out unreadable images; default: the training run's data.skip_bad")
    split: Literal["train", "val", "all"] = "val"
    backbone: Literal[BACKBONE_NAMES] = "auto"
    inception_weights: Path | None = None
    extra_backbones: tuple[Literal[NETWORK_NAMES], ...] = Field((), description="also score the same samples on these networks")
    num_samples: int = Field(5000, ge=2)
    batch_size: Literal["auto"] | PositiveInt = "auto"
    kid_subset_size: int = Field(1000, ge=2)
    grid: int = Field(8, ge=1, description="samples.png holds grid x grid samples (conditional models: about as many, one labelled block per class)")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    temperature: float = Field(1.0, gt=0.0)
    sampler: Literal["auto", "prior", "gmm"] = Field(
        "auto", description="auto = the checkpoint's latent mixture if it has one; gmm fits one now if it has none"
    )
    interpolation: InterpolationConfig = InterpolationConfig()
    output_dir: Path | None = Field(None, description="default: <checkpoint>/test")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")

    @model_validator(mode="after")
    def _check(self) -> TestConfig:
        check_extra_backbones(self.backbone, self.extra_backbones)
        return self


def check_extra_backbones(backbone: str, extras: tuple[str, ...], prefix: str = "") -> None:
    """The second opinions must be other networks than the first, each scored once."""
    if extras and backbone == "none":
        raise ValueError(f"{prefix}extra_backbones is set but {prefix}backbone is none, so nothing is scored; choose a backbone or drop the extras")
    if len(set(extras)) != len(extras) or backbone in extras:
        raise ValueError(f"{prefix}extra_backbones {list(extras)} repeats a network ({prefix}backbone is {backbone}); list each once")


# ---------------------------------------------------------------------------------------
# Loading, overrides and readable errors


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Read YAML `path` (or take `base`), apply `--set key.path=value` overrides, validate."""
    source = _source(path, overrides, "the config")
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
    return config_from_dict(raw, source)


def _nothing_in(path: str | Path) -> str:
    """How a YAML file that holds no settings is empty, in words."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    if not any(lines):
        return "is empty"
    if all(not line or line.startswith("#") for line in lines):
        return "holds only comments"
    return "holds no settings"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        _check_path_names(path)
    except ValueError as exc:
        raise ConfigError(f"config file {path} cannot exist: {exc}. Pass an existing YAML file with --config.") from None
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"config file {path} {what}. Pass an existing YAML file with --config "
            f"(the repository's examples are in configs/)."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}), so it cannot be a YAML config; pass the .yaml file.") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{path} is not valid YAML{where}: {problem}. Check indentation and that every "
            f"`key: value` pair has a space after the colon."
        ) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (data:, model:, train:, ...), "
            f"not a {type(raw).__name__}."
        )
    return raw


def apply_override(raw: dict, item: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML."""
    key_path, sep, text = item.partition("=")
    if not sep or not all(key_path.strip().split(".")):
        raise ConfigError(
            f"--set {item!r} is not of the form key.path=value, e.g. --set train.epochs=5."
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())  # PyYAML's report spans lines with a caret drawing
        raise ConfigError(f"--set {item!r}: the value {text!r} is not valid YAML ({reason}); quote the whole --set argument in the shell.") from exc
    set_key_path(raw, key_path.strip(), value, where=f"--set {item!r}")


def set_key_path(raw: dict, key_path: str, value: Any, where: str = "") -> None:
    """raw["a"]["b"] = value for key_path "a.b", creating sections on the way."""
    keys = key_path.split(".")
    node = raw
    for depth, key in enumerate(keys[:-1]):
        if node.get(key) is None:  # `model:` with nothing under it is an empty section in YAML
            node[key] = {}
        child = node[key]
        if not isinstance(child, dict):
            done = ".".join(keys[: depth + 1])
            raise ConfigError(f"{where or key_path}: `{done}` is a value, not a section, so it has no `{keys[depth + 1]}`.")
        node = child
    node[keys[-1]] = value


def check_key_path(key_path: str, source: str, schema: type[Section] = Config) -> None:
    """Raise the train config's unknown-key error for a key path that names no setting of `schema`."""
    keys = key_path.split(".")
    for depth, key in enumerate(keys):
        section = _section_at(keys[:depth], schema)
        if section is None:
            raise ConfigError(f"{source}: `{'.'.join(keys[:depth])}` is a value, not a section, so it has no `{key}`.")
        if key not in section.model_fields:
            raise ConfigError(f"{source}: " + _describe({"type": "extra_forbidden", "loc": tuple(keys[: depth + 1])}, schema))
    if _section_at(keys, schema) is not None:
        fields = ", ".join(f"{key_path}.{name}" for name in _section_at(keys, schema).model_fields)
        raise ConfigError(f"{source}: `{key_path}` is a whole section; name one setting in it ({fields}).")


def load_test_config(path: str | Path | None, overrides: list[str] = ()) -> TestConfig:
    raw = read_yaml(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw, _source(path, overrides, "the test config"), schema=TestConfig)


def _source(path: str | Path | None, overrides: list[str], default: str) -> str:
    """How errors name the config: a problem may come from a --set value rather than the file."""
    return (str(path) if path is not None else default) + (" with its --set values" if overrides else "")


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
        problems = [_describe(error, schema) for error in _per_setting(exc.errors(), schema)]
        raise ConfigError(f"{source} has {plural(len(problems), 'problem')}: " + " ".join(problems)) from None


def _per_setting(errors: list[dict], schema: type[BaseModel]) -> list[dict]:
    """pydantic reports a failed `A | B` setting once per alternative, under keys that end in its internal names
    (`eval.batch_size.literal['auto']`, `...constrained-int`): one error per setting instead, saying what it takes."""
    merged, seen = [], set()
    for error in errors:
        names = [part for part in error["loc"] if not isinstance(part, int)]
        cut = next((depth for depth in range(1, len(names)) if _is_setting(names[:depth], schema)), None)
        if cut is None:
            merged.append(error)
            continue
        loc = tuple(names[:cut])
        if loc in seen:
            continue
        seen.add(loc)
        alternatives = [other for other in errors if tuple(p for p in other["loc"] if not isinstance(p, int))[:cut] == loc]
        # a value of the right kind that breaks a bound (eval.batch_size: 0) keeps that bound's message
        wrong_kind = ("_type", "_parsing", "literal_error")
        bound = next((other for other in alternatives if not other["type"].endswith(wrong_kind)), None)
        if bound is not None:
            merged.append({**bound, "loc": loc})
            continue
        expected = _expected(_section_at(list(loc[:-1]), schema).model_fields[loc[-1]].annotation, yes_no=True)
        message = f"Input should be {expected}" if expected else error["msg"]
        merged.append({**error, "loc": loc, "type": "union", "msg": message})
    return merged


def _is_setting(loc: list[str], schema: type[BaseModel]) -> bool:
    """Whether `loc` names a single setting (no section, no mapping of sections) of `schema`."""
    section = _section_at(loc[:-1], schema)
    field = section.model_fields.get(loc[-1]) if section is not None else None
    return field is not None and not _takes_mapping(field.annotation)


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


def _describe(error: dict, schema: type[BaseModel] = None) -> str:
    loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
    key = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1], schema or Config)
        valid = list(section.model_fields) if section else []
        where = f"`{'.'.join(loc[:-1])}`" if loc[:-1] else "the top level"
        hint = _did_you_mean(loc[-1], valid) or f"valid keys in {where}: {', '.join(valid)}."
        return f"unknown key `{key}`; {hint}"
    if kind == "missing" and any(isinstance(part, int) for part in error["loc"]):  # a list one item short
        index = next(part for part in reversed(error["loc"]) if isinstance(part, int))
        return f"`{key}` has too few values: item {index + 1} is missing."
    if kind == "missing":
        return f"missing required key `{key}`."
    if kind == "yes_no":  # _yes_no: the message says what the key takes
        return f"`{key}` {error['msg']}."
    value = error.get("input")
    section = _section_at(loc, schema or Config) if loc else None
    if section is not None and value is not None and not isinstance(value, dict):  # `data: data/apples_sample`
        return _section_not_value(key, loc[-1], section, value)
    parent = _section_at(loc[:-1], schema or Config) if loc else None
    field = parent.model_fields.get(loc[-1]) if parent is not None else None
    if isinstance(value, dict) and field is not None and not _takes_mapping(field.annotation):  # --set train.epochs.x=1
        return _value_not_section(key, field, value)
    if kind == "value_error" and not key:
        return _clean(error["msg"]) + "."
    if kind == "value_error" and isinstance(error.get("input"), dict):  # a section's own check: its dict would bury the message
        return f"`{key}`: {_clean(error['msg'])}."
    if value is None:  # `key:` with nothing after it, or --set key=
        item = next((part for part in error["loc"] if isinstance(part, int)), None)
        if item is not None:  # `widths: [64, null]`, or a `-` with nothing after it
            return f"`{key}` item {item + 1} is empty: give it a value."
        what = f" ({field.description})" if field is not None and field.description else ""
        default = "" if field is None or field.is_required() else _yaml(field.get_default(call_default_factory=True))
        instead = f", or leave it out for the default, {default}" if default else ""
        return f"`{key}` is empty: give it a value{what}{instead}."
    shown = _yaml(value) if isinstance(value, (list, tuple)) else repr(value)  # [64, null], not [64, None]
    return f"`{key}` = {shown} is not allowed: {_clean(error['msg'])}."


def _did_you_mean(word: str, valid: list[str]) -> str | None:
    """'did you mean `latent_dim`?' when one of the `valid` names is close to a misspelt `word`."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    return f"did you mean `{close[0]}`?" if close else None


def _section_not_value(key: str, name: str, section: type[BaseModel], value: Any) -> str:
    """A section given one value: say so, with the section written out; from the value itself when it fits a key
    (the required key, e.g. data's root, or a key whose choices include it)."""
    fields = section.model_fields
    required = [field for field, info in fields.items() if info.is_required()]
    fits = [field for field, info in fields.items() if isinstance(value, str) and repr(value) in _choices(info.annotation)]
    given = f"a list ({_yaml(value)})" if isinstance(value, (list, tuple)) else f"a single value ({_yaml(value)})"
    if isinstance(value, str) and (len(required) == 1 or fits):
        example = _yaml({(required or fits)[0]: value})
        return f"`{key}` is a section of keys, not {given}; write it as `{name}: {example}`."
    simple = [field for field, info in fields.items() if isinstance(info.default, (str, int, float))]
    if simple and not required:
        example = _yaml({simple[0]: fields[simple[0]].default})
    else:
        example = f"{{{(required or list(fields))[0]}: ...}}"
    return f"`{key}` is a section of keys ({', '.join(fields)}), not {given}; write it as e.g. `{name}: {example}`."


def _yaml(value: Any) -> str:
    """`value` as it is written in a config file (true, not True; {root: x})."""
    plain = json.loads(json.dumps(value, default=str))  # tuples as lists, paths as text
    try:
        return yaml.safe_dump(plain, default_flow_style=True, width=1_000).strip().removesuffix("...").strip()
    except yaml.YAMLError:
        return repr(value)


def _value_not_section(key: str, field: Any, value: dict) -> str:
    """A single setting given keys under it: name the keys it does not have."""
    listed = any(get_origin(part) in (tuple, list) for part in _alternatives(field.annotation))
    what = "a list" if listed else "a single value"
    if not value:
        return f"`{key}` is {what} with no keys under it, not an empty mapping ({{}}); give `{key}` a value itself."
    names = _either([f"`{name}`" for name in map(str, value)])
    default = "" if field.is_required() or field.default is None else f" (the default is {_yaml(field.default)})"
    return f"`{key}` is {what} with no keys under it, so it has no {names}; give `{key}` a value itself{default}."


def _choices(annotation: Any) -> list[str]:
    literals = [part for part in _alternatives(annotation) if get_origin(part) is Literal]
    return [repr(choice) for part in literals for choice in get_args(part)]


def _takes_mapping(annotation: Any) -> bool:
    return any(part is Any or _is_section(part) or get_origin(part) is dict for part in _alternatives(annotation))


def _takes_only_mappings(annotation: Any) -> bool:
    """Whether a field takes sections or mappings only: not null, and not a path too (as `base: Path | dict` does)."""
    parts = _alternatives(annotation)
    only = all(_is_section(part) or get_origin(part) is dict for part in parts)
    return bool(parts) and only and type(None) not in get_args(annotation)


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ").rstrip(".")


def _section_at(loc: list[str], model: type[BaseModel]) -> type[BaseModel] | None:
    """The section (pydantic model) at key path `loc`, through `dict[str, Section]` fields too."""
    node: Any = model
    for key in loc:
        if isinstance(node, tuple):  # a free-form key of a dict[str, Section] field
            node = node[0]
            continue
        field = node.model_fields.get(key)
        annotation = field.annotation if field else None
        if get_origin(annotation) is dict and _is_section(get_args(annotation)[1]):
            node = (get_args(annotation)[1],)
        elif _is_section(annotation):
            node = annotation
        else:
            return None
    return node if _is_section(node) else None


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
