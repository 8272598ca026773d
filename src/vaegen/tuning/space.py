"""The sweep file: its `space:` of distributions over config key paths, the base config and `overrides:`, checked
before Ray starts, and each trial's config from the values a searcher drew."""

from __future__ import annotations

import builtins
import itertools
import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError, field_validator, model_validator

from vaegen.config import (
    SEED_MAX,
    Config,
    Section,
    apply_override,
    check_key_path,
    config_from_dict,
    read_yaml,
    set_key_path,
)
from vaegen.errors import ConfigError
from vaegen.models import resolved_and_checked



class Distribution(Section):
    """Exactly one of: loguniform [low, high], uniform [low, high], int [low, high] (both ends included), choice."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None  # `int` is the YAML's word; the field shadows the type here
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [name for name in DISTRIBUTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of loguniform: [low, high], uniform: [low, high], int: [low, high] or "
                f"choice: [a, b, ...] (got {', '.join(given) or 'none'})"
            )
        bounds = self.loguniform or self.uniform or self.int
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"the low end must be below the high end (got {list(bounds)})")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in DISTRIBUTIONS if getattr(self, name) is not None)


DISTRIBUTIONS = ("choice", "int", "loguniform", "uniform")


class Resources(Section):
    cpu: float = Field(1.0, gt=0.0, description="CPU cores per trial (also torch's thread count)")
    gpu: float = Field(0.0, ge=0.0, description="GPUs per trial; a fraction (0.25) lets trials share one GPU")


class TuneSection(Section):
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the sweep's folder name")
    num_samples: PositiveInt = Field(12, description="trials in all, points_to_evaluate included")
    max_concurrent: PositiveInt = 2
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seeds the TPE sampler; trials keep their own train.seed")
    startup_trials: PositiveInt = Field(5, description="random trials before TPE starts modelling the results")
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list, description="tried first, e.g. a recipe")
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: PositiveInt = Field(10, description="ASHA: epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA: keep the best 1/reduction_factor at each rung")
    resources: Resources = Resources()
    storage: str | None = Field(None, description="Ray's results: a folder or a URI; default <logs_dir>/<name>/ray")


class SweepConfig(Section):
    base: Path | dict[str, Any] = Field(description="train config file (relative to this file) or the config itself")
    overrides: dict[str, Any] = Field(default_factory=dict, description="key.path: value, the same for every trial")
    space: dict[str, Distribution] = Field(min_length=1)
    tune: TuneSection = TuneSection()

    @field_validator("space", mode="before")
    @classmethod
    def _something_to_search(cls, space: Any) -> Any:
        if isinstance(space, dict) and not space:  # pydantic's own words here ("at least 1 item") name no fix
            raise ValueError("space is empty, so there is nothing to search; name at least one setting, e.g. "
                             "space: {optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}")
        return space

    @field_validator("base", mode="before")
    @classmethod
    def _path_or_mapping(cls, base: Any) -> Any:
        # checked here because pydantic names a failed `Path | dict` by its internal validators, not by `base`
        if not isinstance(base, (str, os.PathLike, dict)):
            raise ValueError("base is the path of a train config file (relative to the sweep file), e.g. "
                             "base: train_apples.yaml, or the train config itself as a mapping")
        return base

    @model_validator(mode="before")
    @classmethod
    def _flatten_key_paths(cls, raw: Any) -> Any:
        """`train: {epochs: 5}` means `train.epochs: 5` (`--set overrides.train.epochs=5` makes the first)."""
        if isinstance(raw, dict):
            raw = dict(raw)
            if isinstance(raw.get("overrides"), dict):
                raw["overrides"] = _flatten(raw["overrides"], is_leaf=lambda value: not isinstance(value, dict))
            if isinstance(raw.get("space"), dict):
                # a distribution is the first mapping that holds a non-mapping, or an empty one (reported, not lost)
                raw["space"] = _flatten(raw["space"], is_leaf=lambda value: not isinstance(value, dict) or not value
                                        or not all(isinstance(inner, dict) for inner in value.values()))
        return raw


def _flatten(mapping: dict, is_leaf, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if is_leaf(value):
            flat[f"{prefix}{key}"] = value
        else:
            flat.update(_flatten(value, is_leaf, f"{prefix}{key}."))
    return flat


# the trial's own bookkeeping; a sweep that searched these would compare unlike numbers or lose runs
FIXED_BY_THE_SWEEP = ("output.select", "eval.backbone", "output.logs_dir", "output.best_dir", "output.run_name")
# paths in a train config, made absolute because trials run in Ray's workers with another cwd
PATH_KEYS = ("data.root", "data.labels", "data.cache_dir", "eval.inception_weights", "output.logs_dir", "output.best_dir")


@dataclass
class Sweep:
    """A validated sweep: its settings, the base train config every trial starts from, and where it writes."""

    settings: SweepConfig
    base_raw: dict[str, Any]  # the train config as a mapping, overrides applied, paths absolute
    base: Config

    def __post_init__(self) -> None:
        self.name = self.settings.tune.name
        self.sweep_dir = self.base.output.logs_dir / self.name
        self.trials_dir = self.sweep_dir / "trials"
        self.storage = self.settings.tune.storage or str(self.sweep_dir / "ray")  # Ray's results
        self.experiment_path = f"{self.storage.rstrip('/')}/{self.name}"
        self.best_dir = self.base.output.best_dir / f"{self.name}-best"

    @cached_property
    def metric(self) -> str:
        """What trials report and ASHA/Optuna minimise; read once the data loads (eval.backbone auto may warn)."""
        from vaegen.evaluation.backbones import resolve_backbone_name
        from vaegen.evaluation.frechet import metric_names

        if self.base.output.select != "fid":
            return self.base.output.select
        return metric_names(resolve_backbone_name(self.base.eval.backbone, self.base.eval.inception_weights))[0]

    @property
    def max_epochs(self) -> int:
        searched = self.settings.space.get("train.epochs")  # whole numbers: load_sweep checked
        if searched is None:
            return self.base.train.epochs
        return max(searched.choice) if searched.kind == "choice" else searched.int[1]


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read and check a sweep file: every key path, and the values its space hands the trials, before Ray starts."""
    path = Path(path)
    raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item)
    settings = config_from_dict(raw, str(path), schema=SweepConfig)
    for key_path in settings.overrides:
        check_key_path(key_path, f"{path}: overrides")
    for key_path in settings.space:
        check_key_path(key_path, f"{path}: space")
        if key_path in FIXED_BY_THE_SWEEP:
            raise ConfigError(f"{path}: space searches `{key_path}`, which the sweep fixes for every trial (it decides "
                              f"what is measured or where runs go). Set it once under `overrides:` instead.")
    for index, point in enumerate(settings.tune.points_to_evaluate):
        if unknown := sorted(set(point) - set(settings.space)):
            raise ConfigError(f"{path}: tune.points_to_evaluate[{index}] sets {', '.join(unknown)}, which the space "
                              f"does not search ({', '.join(settings.space)}).")
    base_raw = _base_raw(settings, path)
    sweep = Sweep(settings, base_raw, config_from_dict(base_raw, f"{path} (base train config)"))
    try:
        resolved_and_checked(sweep.base)
    except ConfigError as exc:  # its family's rule: the config's error names no file
        raise ConfigError(f"{path} (base train config) is refused: {exc}") from None
    _check_searched_epochs(settings.space.get("train.epochs"), path)
    _check_space(settings.space, base_raw, path)
    if settings.tune.scheduler == "asha" and settings.tune.grace_period > sweep.max_epochs:
        raise ConfigError(
            f"{path}: tune.grace_period is {settings.tune.grace_period} epochs but the trials train for at most "
            f"{sweep.max_epochs}, so ASHA could never stop one. Lower tune.grace_period, or set tune.scheduler: fifo."
        )
    return sweep


def _base_raw(settings: SweepConfig, path: Path) -> dict[str, Any]:
    """The base train config as a mapping: overrides applied, paths absolute."""
    if isinstance(settings.base, dict):
        base_raw = json.loads(json.dumps(settings.base))
    else:
        base_raw = read_yaml(settings.base if settings.base.is_absolute() else path.parent / settings.base)
    for key_path, value in settings.overrides.items():
        set_key_path(base_raw, key_path, value)
    defaults = {"output.logs_dir": "logs", "output.best_dir": "best_models"}
    for key_path in PATH_KEYS:
        value = base_raw
        for key in key_path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        value = defaults.get(key_path) if value is None else value
        if value is not None:
            set_key_path(base_raw, key_path, str(Path(value).expanduser().resolve()))
    return base_raw


def _check_searched_epochs(distribution: Distribution | None, path: Path) -> None:
    """ASHA needs the longest trial's epoch count, and a trial fails on a fractional one: only whole numbers."""
    if distribution is None:
        return
    values = {"int": distribution.int, "choice": distribution.choice}.get(distribution.kind)
    if values is None or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(
            f"{path}: space searches train.epochs with {_as_yaml(distribution)}, but a trial trains for a whole number "
            f"of epochs (at least 1). Search it with int: [low, high] (e.g. train.epochs: {{int: [10, 50]}}) or a "
            f"choice of whole numbers (e.g. {{choice: [10, 20, 40]}})."
        )


# a value refused only beside other settings is looked for in at most this many combinations of theirs
COMBINATIONS_TRIED = 4096


def _check_space(space: dict[str, Distribution], base_raw: dict[str, Any], path: Path) -> None:
    """Refuse a value (a range's end, a choice) no trial config takes, alone or beside any other searched values."""
    tried = {key: [("one of its choices", sampled(value)) for value in d.choice] if d.kind == "choice"
             else list(zip(("its low end", "its high end"), getattr(d, d.kind))) for key, d in space.items()}
    for key, candidates in tried.items():  # each on its own first, so that no value is blamed for another's problem
        for where, value in candidates:
            raw = trial_raw(base_raw, space, {key: value})
            if any(loc[: key.count(".") + 1] == tuple(key.split(".")) for loc in _refused_at(raw)):
                _refuse(raw, path, key, space[key], where)
    for key, candidates in tried.items():
        others = [[(other, value) for _, value in tried[other]] for other in tried if other != key]
        if math.prod(map(len, others)) > COMBINATIONS_TRIED:
            continue  # too many to try here: the trials report such a value
        for where, value in candidates:
            combinations = [{key: value, **dict(combination)} for combination in itertools.product(*others)]
            if all(_refused_at(trial_raw(base_raw, space, params)) for params in combinations):
                where += ", whatever the other searched settings," if others else ""
                _refuse(trial_raw(base_raw, space, combinations[0]), path, key, space[key], where)


def _refused_at(raw: dict[str, Any]) -> list[tuple[str, ...]]:
    """The key paths (tuples of names) the train config `raw` is refused for; [] when it is valid."""
    try:
        resolved_and_checked(Config.model_validate(raw))
    except ValidationError as exc:
        return [tuple(part for part in error["loc"] if isinstance(part, str)) for error in exc.errors()]
    except ConfigError:  # a family's rule, which names no one key path
        return [()]
    return []


def _refuse(raw: dict[str, Any], path: Path, key: str, distribution: Distribution, where: str) -> None:
    """Raise the config's own error for `raw`, a trial's config with `key` at `where` of its distribution."""
    context = f"{path}: space searches `{key}` with {_as_yaml(distribution)}, and a trial at {where}"
    try:
        config = config_from_dict(raw, context)
        try:
            resolved_and_checked(config)
        except ConfigError as exc:  # its family's rule: the config's error names no file
            raise ConfigError(f"{context} is refused: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{exc} Narrow `{key}` to values the config takes; trials given such a value would fail.") \
            from None


def _as_yaml(distribution: Distribution) -> str:
    return sampled({distribution.kind: getattr(distribution, distribution.kind)})  # one line of YAML


# --- Search space: YAML distributions as Ray Tune domains (OptunaSearch turns them into Optuna's)
def to_domain(distribution: Distribution):
    from ray import tune

    if distribution.kind == "choice":
        return tune.choice([sampled(value) for value in distribution.choice])
    low, high = getattr(distribution, distribution.kind)
    if distribution.kind == "int":
        return tune.randint(low, high + 1)  # Ray's high end is exclusive, the YAML's not
    return getattr(tune, distribution.kind)(low, high)  # tune.loguniform, tune.uniform


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def sampled(value: Any) -> Any:
    """A value as a trial is handed it: Optuna's categorical takes scalars only, so a list travels as YAML text."""
    return value if _is_scalar(value) else yaml.safe_dump(value, default_flow_style=True).strip()


def from_sampled(value: Any, distribution: Distribution) -> Any:
    if distribution.kind == "choice" and isinstance(value, str) and not all(map(_is_scalar, distribution.choice)):
        return yaml.safe_load(value)
    return int(value) if distribution.kind == "int" else value


# --- One trial: an ordinary training run that reports to Ray Tune after every evaluation
def trial_raw(base_raw: dict[str, Any], space: dict[str, Distribution], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's train config as a mapping: the base with the values the search drew."""
    raw = json.loads(json.dumps(base_raw))
    for key_path, value in params.items():
        set_key_path(raw, key_path, from_sampled(value, space[key_path]))
    return raw


def trial_config(sweep: Sweep, params: dict[str, Any], trial_id: str) -> Config:
    raw = trial_raw(sweep.base_raw, sweep.settings.space, params)
    set_key_path(raw, "output.run_name", trial_id)
    return config_from_dict(raw, "its config")  # the console line and summary.csv name the trial beside this
