"""`vaegen tune`: hyper-parameter sweeps with Ray Tune (scheduling, fault tolerance, clusters) and
Optuna (TPE search), each trial an ordinary `vaegen.train.train` run.

A sweep YAML names a base train config, fixed overrides and a search space over config key paths:

    base: train_apples.yaml                  # relative to this file, or a mapping (the config itself)
    overrides: {train.epochs: 30}            # applied to every trial
    space:
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.latent_dim: {choice: [64, 96, 128, 192]}
    tune: {name: apples-lr-latent, num_samples: 16, max_concurrent: 4, resources: {cpu: 4, gpu: 0.25}}

The trials report the trainer's selection metric (FID by default) after every evaluation; ASHA stops
the weak ones early and Optuna proposes the next. Everything a sweep writes sits in
`<logs_dir>/<name>/`: one run folder per trial under `trials/`, `summary.csv`, the metric-vs-parameter
plot and Ray's experiment state (or `tune.storage`). The best trial's model is copied to
`<best_dir>/<name>-best/`, the folder layout `vaegen train` writes, so `vaegen test` and the gallery
load it.
"""

from __future__ import annotations

import builtins
import csv
import itertools
import json
import logging
import math
import os
import shutil
import socket
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError, field_validator, model_validator

from vaegen.config import (
    SEED_MAX,
    Config,
    Section,
    check_key_path,
    config_from_dict,
    read_yaml,
    set_key_path,
)
from vaegen.errors import ConfigError, TrainingDiverged, VaegenError, plural

try:  # Ray is the `tune` extra; without it run_sweep says how to install it before anything needs this
    from ray.tune import Callback as _RayCallback
except ImportError:
    _RayCallback = object

# ---------------------------------------------------------------------------------------
# The sweep file


class Distribution(Section):
    """Exactly one of: loguniform [low, high], uniform [low, high], int [low, high] (both ends
    included), choice [values...]."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None  # `int` is the YAML's word; the field shadows the type here
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [name for name in sorted(DISTRIBUTIONS) if getattr(self, name) is not None]
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
        return next(name for name in sorted(DISTRIBUTIONS) if getattr(self, name) is not None)


class Resources(Section):
    cpu: float = Field(1.0, gt=0.0, description="CPU cores per trial (also torch's thread count)")
    gpu: float = Field(0.0, ge=0.0, description="GPUs per trial; a fraction (0.25) lets trials share one GPU")


class TuneSection(Section):
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the sweep's folder name")
    num_samples: PositiveInt = Field(12, description="trials in all, points_to_evaluate included")
    max_concurrent: PositiveInt = 2
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seeds the TPE sampler; trials keep their own train.seed")
    startup_trials: PositiveInt = Field(5, description="random trials before TPE starts modelling the results")
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="configurations tried first, e.g. the reference recipe"
    )
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: PositiveInt = Field(10, description="ASHA: epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA: keep the best 1/reduction_factor at each rung")
    resources: Resources = Resources()
    storage: str | None = Field(None, description="Ray's results: a folder or a URI (s3://...); default <logs_dir>/<name>/ray")


class SweepConfig(Section):
    base: Path | dict[str, Any] = Field(description="train config file (relative to the sweep file) or the config itself")
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
            raise ValueError(
                "base is the path of a train config file (relative to the sweep file), e.g. base: train_apples.yaml, "
                "or the train config itself as a mapping"
            )
        return base

    @model_validator(mode="before")
    @classmethod
    def _flatten_key_paths(cls, raw: Any) -> Any:
        """`train: {epochs: 5}` and `train.epochs: 5` mean the same (`--set overrides.train.epochs=5` makes the first)."""
        if isinstance(raw, dict):
            raw = dict(raw)
            if isinstance(raw.get("overrides"), dict):
                raw["overrides"] = _flatten(raw["overrides"], is_leaf=lambda value: not isinstance(value, dict))
            if isinstance(raw.get("space"), dict):
                # a distribution is the first mapping that holds a non-mapping (its bounds or choices); an empty
                # one is a distribution too, so that it is reported instead of vanishing from the space
                raw["space"] = _flatten(raw["space"], is_leaf=lambda value: not isinstance(value, dict) or not value
                                        or not all(isinstance(inner, dict) for inner in value.values()))
        return raw


DISTRIBUTIONS = {"loguniform", "uniform", "int", "choice"}


def _flatten(mapping: dict, is_leaf, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if is_leaf(value):
            flat[path] = value
        else:
            flat.update(_flatten(value, is_leaf, f"{path}."))
    return flat


# the trial's own bookkeeping; a sweep that searched these would compare unlike numbers or lose runs
FIXED_BY_THE_SWEEP = ("output.select", "eval.backbone", "output.logs_dir", "output.best_dir", "output.run_name")
# paths in a train config, made absolute because trials run in Ray's workers with another cwd
PATH_KEYS = ("data.root", "data.cache_dir", "eval.inception_weights", "output.logs_dir", "output.best_dir")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its settings, the base train config every trial starts from, and where it writes."""

    settings: SweepConfig
    source: Path
    base_raw: dict[str, Any]  # the train config as a mapping, overrides applied, paths absolute
    base: Config

    @cached_property
    def metric(self) -> str:
        """What the trials report and ASHA/Optuna minimise. Read once the data is known to load: eval.backbone auto
        warns here when it falls back, and a sweep that cannot start for its data has no use for that warning."""
        return selection_metric(self.base)

    @property
    def name(self) -> str:
        return self.settings.tune.name

    @property
    def sweep_dir(self) -> Path:
        return self.base.output.logs_dir / self.name

    @property
    def trials_dir(self) -> Path:
        return self.sweep_dir / "trials"

    @property
    def storage(self) -> str:
        return self.settings.tune.storage or str(self.sweep_dir / "ray")

    @property
    def experiment_path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def best_dir(self) -> Path:
        return self.base.output.best_dir / f"{self.name}-best"


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read and check a sweep file; every key path, and the values its space hands the trials, are checked here,
    before Ray starts."""
    from vaegen.config import apply_override

    path = Path(path)
    raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item)
    settings = config_from_dict(raw, str(path), schema=SweepConfig)

    if isinstance(settings.base, dict):
        base_raw = json.loads(json.dumps(settings.base))
    else:
        base_file = settings.base if settings.base.is_absolute() else path.parent / settings.base
        base_raw = read_yaml(base_file)
    for key_path, value in settings.overrides.items():
        check_key_path(key_path, f"{path}: overrides")
        set_key_path(base_raw, key_path, value)
    for key_path in settings.space:
        check_key_path(key_path, f"{path}: space")
        if key_path in FIXED_BY_THE_SWEEP:
            raise ConfigError(
                f"{path}: space searches `{key_path}`, which the sweep fixes for every trial (it decides what is "
                f"measured or where runs go). Set it once under `overrides:` instead."
            )
    for index, point in enumerate(settings.tune.points_to_evaluate):
        unknown = sorted(set(point) - set(settings.space))
        if unknown:
            raise ConfigError(
                f"{path}: tune.points_to_evaluate[{index}] sets {', '.join(unknown)}, which the space does not search; "
                f"a point names only keys of `space:` ({', '.join(settings.space)})."
            )
    for key_path in PATH_KEYS:
        value = _get(base_raw, key_path)
        if value is not None:
            set_key_path(base_raw, key_path, str(Path(value).expanduser().resolve()))
    if _get(base_raw, "output.logs_dir") is None:
        set_key_path(base_raw, "output.logs_dir", str(Path("logs").resolve()))
    if _get(base_raw, "output.best_dir") is None:
        set_key_path(base_raw, "output.best_dir", str(Path("best_models").resolve()))
    base = config_from_dict(base_raw, f"{path} (base train config)")
    _check_searched_epochs(settings.space.get("train.epochs"), path)
    _check_space(settings.space, base_raw, path)
    sweep = Sweep(settings, path, base_raw, base)
    if settings.tune.scheduler == "asha" and settings.tune.grace_period > max_epochs(sweep):
        raise ConfigError(
            f"{path}: tune.grace_period is {settings.tune.grace_period} epochs but the trials train for at most "
            f"{max_epochs(sweep)}, so ASHA could never stop one. Lower tune.grace_period (e.g. to a quarter of the "
            f"epochs), or set tune.scheduler: fifo to run every trial to the end."
        )
    return sweep


def _check_searched_epochs(distribution: Distribution | None, path: Path) -> None:
    """ASHA needs the longest trial's epoch count, and a trial fails on a fractional one: only whole numbers."""
    if distribution is None:
        return
    values = {"int": distribution.int, "choice": distribution.choice}.get(distribution.kind)
    whole = values is not None and all(isinstance(value, int) and not isinstance(value, bool) and value >= 1
                                       for value in values)
    if not whole:
        raise ConfigError(
            f"{path}: space searches train.epochs with {_as_yaml(distribution)}, "
            f"but a trial trains for a whole number of epochs (at least 1). Search it with int: [low, high] "
            f"(e.g. train.epochs: {{int: [10, 50]}}) or a choice of whole numbers (e.g. {{choice: [10, 20, 40]}})."
        )


# a value refused only beside other settings is looked for in at most this many combinations of theirs
COMBINATIONS_TRIED = 4096


def _check_space(space: dict[str, Distribution], base_raw: dict[str, Any], path: Path) -> None:
    """Refuse, before Ray starts, a space with values that no trial config takes: each end of a range and every
    choice is built into a trial's config. A value refused on its own (optim.lr -0.001) is refused at once; one
    refused only beside other settings (beta.warmup above beta.cycle) only if no combination of the other searched
    settings' ends and choices takes it."""
    tried = {key: _candidates(distribution) for key, distribution in space.items()}
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


def _candidates(distribution: Distribution) -> list[tuple[str, Any]]:
    """What _check_space tries of a distribution, as a trial is handed it (to_domain's values): (where, value)."""
    if distribution.kind == "choice":
        return [("one of its choices", _sampled(value)) for value in distribution.choice]
    low, high = getattr(distribution, distribution.kind)
    return [("its low end", low), ("its high end", high)]


def _refused_at(raw: dict[str, Any]) -> list[tuple[str, ...]]:
    """The key paths (as tuples of names) that the train config `raw` is refused for; [] when it is valid."""
    try:
        Config.model_validate(raw)
    except ValidationError as exc:
        return [tuple(part for part in error["loc"] if isinstance(part, str)) for error in exc.errors()]
    return []


def _refuse(raw: dict[str, Any], path: Path, key: str, distribution: Distribution, where: str) -> None:
    """Raise the config's own error for `raw`, a trial's config with `key` at `where` of its distribution."""
    try:
        config_from_dict(raw, f"{path}: space searches `{key}` with {_as_yaml(distribution)}, and a trial at {where}")
    except ConfigError as exc:
        fix = f"Narrow `{key}` to values the config takes; trials given such a value would fail."
        raise ConfigError(f"{exc} {fix}") from None


def _as_yaml(distribution: Distribution) -> str:
    searched = {distribution.kind: getattr(distribution, distribution.kind)}
    return yaml.safe_dump(searched, default_flow_style=True).strip()


def selection_metric(config: Config) -> str:
    from vaegen.backbones import resolve_backbone_name
    from vaegen.fid import metric_names

    if config.output.select != "fid":
        return config.output.select
    return metric_names(resolve_backbone_name(config.eval.backbone, config.eval.inception_weights))[0]


def _get(raw: dict, key_path: str) -> Any:
    node: Any = raw
    for key in key_path.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node


# ---------------------------------------------------------------------------------------
# Search space: YAML distributions as Ray Tune domains (OptunaSearch turns them into Optuna's)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def to_domain(distribution: Distribution):
    from ray import tune

    kind = distribution.kind
    if kind == "loguniform":
        return tune.loguniform(*distribution.loguniform)
    if kind == "uniform":
        return tune.uniform(*distribution.uniform)
    if kind == "int":
        low, high = distribution.int
        return tune.randint(low, high + 1)  # Ray's upper end is exclusive; the YAML's is inclusive
    return tune.choice([_sampled(value) for value in distribution.choice])


def _sampled(choice: Any) -> Any:
    """A choice as a trial is handed it: Optuna's categorical takes scalars only, so a list (e.g. model.widths)
    travels as its YAML text."""
    return choice if _is_scalar(choice) else yaml.safe_dump(choice, default_flow_style=True).strip()


def from_sampled(key_path: str, value: Any, distribution: Distribution) -> Any:
    if distribution.kind == "choice" and isinstance(value, str) and not all(_is_scalar(v) for v in distribution.choice):
        return yaml.safe_load(value)
    if distribution.kind == "int":
        return int(value)
    return value


# ---------------------------------------------------------------------------------------
# One trial: an ordinary training run that reports to Ray Tune after every evaluation


@dataclass(frozen=True)
class TrialContext:
    base_raw: dict[str, Any]
    space: dict[str, Distribution]
    trials_dir: Path
    metric: str
    cpus: float


def trial_raw(base_raw: dict[str, Any], space: dict[str, Distribution], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's train config as a mapping: the base with the values the search drew."""
    raw = json.loads(json.dumps(base_raw))
    for key_path, value in params.items():
        set_key_path(raw, key_path, from_sampled(key_path, value, space[key_path]))
    return raw


def trial_config(context: TrialContext, params: dict[str, Any], trial_id: str) -> Config:
    raw = trial_raw(context.base_raw, context.space, params)
    set_key_path(raw, "output.run_name", trial_id)
    # not "trial X (values)": wherever this error is shown, the trial and its values are named beside it (the
    # console's `trial X failed: ...`, summary.csv's row, the sweep's last error); the problem names the bad key
    return config_from_dict(raw, "its config")


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune's function trainable. A restored sweep continues a trial from its own last.pt."""
    import torch
    from ray import tune

    from vaegen.tracking import draw_curves
    from vaegen.train import RunPaths, train

    torch.set_num_threads(max(1, int(context.cpus)))
    trial_id = tune.get_context().get_trial_id()
    config = trial_config(context, params, trial_id)
    run_dir = context.trials_dir / trial_id
    paths = RunPaths(trial_id, run_dir, run_dir / "best")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "params.json").write_text(json.dumps(params, indent=2) + "\n")

    def report(row: dict, improved: bool) -> None:
        if row.get(context.metric) is None:
            return  # epochs without an evaluation have no FID to report
        # ASHA may stop this trial inside tune.report, before train() draws its curves
        draw_curves(run_dir, title=f"trial {trial_id}")
        metrics = {"epoch": row["epoch"], context.metric: row[context.metric], "val_nelbo": row["val_nelbo"]}
        if improved:  # Ray keeps the checkpoint beside the trial's results, so the sweep's best outlives this node
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(paths.best_dir)))
        else:
            tune.report(metrics)

    try:
        train(config, paths, resume=paths.last_checkpoint.is_file(), on_epoch=report, echo=False)
    except TrainingDiverged as exc:
        # a plain run's next step (`vaegen train --resume RUN_DIR`) is not a sweep's: the fixes go in the sweep file
        raise TrainingDiverged(f"{exc.diagnosis} (in the sweep's `space:` or `overrides:`).", exc.diagnosis) from None


def tidy_trial_folder(run_dir: Path) -> None:
    """Remove what a trial's process left half written when Ray ended it, and redraw curves.png if that was it.

    Ray ends a trial that ASHA stopped (or a sweep's trials on Ctrl+C) by ending its process, which is then often
    inside train()'s `finally`, drawing the curves: the atomic write's temporary file stays, empty. Call this only
    once the trial's process is gone, or the file it is writing would be taken from under it."""
    from vaegen.tracking import draw_curves

    interrupted_curves = False
    for leftover in run_dir.rglob(".*.tmp"):  # atomic_write's temporary files: .<name>.<random>.tmp
        leftover.unlink(missing_ok=True)
        interrupted_curves |= leftover.name.startswith(".curves.png.")
    if interrupted_curves or not (run_dir / "curves.png").is_file():
        draw_curves(run_dir, title=f"trial {run_dir.name}")


def trial_epochs(params: dict[str, Any], base_epochs: int) -> int:
    """The epochs a trial trains for: its searched train.epochs, or the base config's."""
    return int(params.get("train.epochs") or base_epochs)


def trial_status(failed: bool, last_epoch: int, epochs: int, ended: bool = True) -> str:
    """failed; finished (it ran all its epochs); stopped early (it ended before them without an error: ASHA
    stopped it); or not finished (the sweep was interrupted before the trial ended)."""
    if failed:
        return "failed"
    if last_epoch >= epochs:
        return "finished"
    return "stopped early" if ended else "not finished"


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_short(value)}" for key, value in params.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------
# The sweep


@dataclass(frozen=True)
class TrialSummary:
    trial: str
    params: dict[str, Any]
    best: float | None
    epoch: int | None
    status: str  # finished | stopped early | failed | not finished
    error: str = ""


class NoTrialSucceeded(VaegenError):
    """Every trial failed; the sweep exits with the first trial error's code (3 when the loss diverged)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class SweepResult:
    trials: list[TrialSummary]
    complete: bool
    summary_csv: Path
    plot: Path | None
    best_dir: Path | None


def run_sweep(sweep: Sweep, resume: bool = False, address: str | None = None) -> SweepResult:
    ray, tune = _import_ray()
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from vaegen.data import SWEEP_SETTINGS, load_splits

    address, given_as = cluster_address(address)
    if given_as is not None:
        check_reachable(address, given_as=given_as)
    settings = sweep.settings.tune
    # keeping only the best checkpoint makes Ray snapshot its state at each improvement, and warn that it does
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    can_restore = tune.Tuner.can_restore(sweep.experiment_path)
    if resume and not can_restore:
        raise ConfigError(
            f"--resume: there is no sweep {sweep.name!r} to continue at {sweep.experiment_path}. Start it without --resume."
        )
    if not resume and can_restore:
        raise ConfigError(
            f"a sweep named {sweep.name!r} already exists at {sweep.experiment_path}. Continue it with --resume, "
            f"or start another with --set tune.name=NEW_NAME."
        )
    # decode the images into the shared cache once, here, instead of in every trial at the same time; its errors
    # name the sweep's keys (overrides.data.root), and come before the evaluation's warnings (sweep.metric's)
    load_splits(sweep.base.data, sweep.base.train.seed, SWEEP_SETTINGS)
    context = TrialContext(sweep.base_raw, dict(sweep.settings.space), sweep.trials_dir, sweep.metric, settings.resources.cpu)
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    started_with = sweep.sweep_dir / "sweep.yaml"
    if not resume:
        started_with.write_text(sweep_record(sweep.settings))
    elif started_with.is_file() and read_sweep_record(started_with) != sweep.settings:
        warnings.warn(
            f"the sweep file changed since this sweep started; --resume continues with the search it started with "
            f"({started_with}). Start a new sweep (--set tune.name=NEW_NAME) to search something else.",
            stacklevel=2,
        )
    print(sweep_header(sweep, resume), flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context),
        {"cpu": settings.resources.cpu, "gpu": settings.resources.gpu},
    )
    restore_console = quiet_ray_and_optuna()
    try:
        start_ray(ray, address, given_as)
        if resume:
            tuner = tune.Tuner.restore(sweep.experiment_path, trainable, resume_unfinished=True, resume_errored=False)
        else:
            searcher = OptunaSearch(
                metric=sweep.metric,
                mode="min",
                sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials),
                points_to_evaluate=[{key: _to_searched(sweep, key, value) for key, value in point.items()}
                                    for point in settings.points_to_evaluate] or None,
            )
            scheduler = None
            if settings.scheduler == "asha":
                scheduler = ASHAScheduler(
                    time_attr="epoch",
                    max_t=max_epochs(sweep),  # ASHA stops every trial at max_t, also one that searched more epochs
                    grace_period=settings.grace_period,
                    reduction_factor=settings.reduction_factor,
                )
            tuner = tune.Tuner(
                trainable,
                param_space={key: to_domain(distribution) for key, distribution in sweep.settings.space.items()},
                tune_config=tune.TuneConfig(
                    metric=sweep.metric,
                    mode="min",
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=settings.num_samples,
                    max_concurrent_trials=settings.max_concurrent,
                    # Ray's folder for a trial is named like vaegen's run folder for it: trials/<trial id>
                    trial_name_creator=_trial_id,
                    trial_dirname_creator=_trial_id,
                ),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    storage_path=sweep.storage,
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=1, checkpoint_score_attribute=sweep.metric, checkpoint_score_order="min"
                    ),
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                    # kept in the sweep's state, so a resumed sweep prints the same lines (Ray restores the best values)
                    callbacks=[SweepConsole(sweep.metric, list(sweep.settings.space), sweep.base.train.epochs,
                                           sweep.trials_dir)],
                    verbose=0,
                ),
            )
        grid = tuner.fit()
        trials = summarize(grid, sweep)
        complete = len(trials) >= settings.num_samples and all(t.status != "not finished" for t in trials)
        summary_csv = write_summary(trials, sweep)
        plot = plot_sweep(trials, sweep)
        best_dir = copy_best(grid, trials, sweep)
        if trials and all(t.status == "failed" for t in trials):
            raise no_trial_succeeded(grid, trials, sweep)
    finally:
        ray.shutdown()
        restore_console()
    return SweepResult(trials, complete, summary_csv, plot, best_dir)


def sweep_record(settings: SweepConfig) -> str:
    """sweep.yaml: the sweep as it started. Every default is written out (a later vaegen may change one, and the
    record must still say what ran); nulls are not (a distribution's other kinds, an unset storage), as leaving
    one out reads back as the same null. Nulls inside overrides, a base mapping or a choice are values, and stay."""
    return yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True), sort_keys=False)


def read_sweep_record(path: Path) -> SweepConfig | None:
    """sweep.yaml read back; None where it no longer reads as a sweep (written by another vaegen version)."""
    try:
        return SweepConfig.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def sweep_header(sweep: Sweep, resume: bool) -> str:
    settings = sweep.settings.tune
    return (f"{'resuming' if resume else 'starting'} sweep {sweep.name}: {plural(settings.num_samples, 'trial')}, "
            f"{settings.max_concurrent} at a time, in {sweep.sweep_dir}/  "
            f"(TensorBoard: tensorboard --logdir {sweep.trials_dir})")


class SweepConsole(_RayCallback):
    """vaegen's console for a sweep, in place of Ray's tables: one line when a trial starts, one per evaluation
    (with the best value of the whole sweep so far), one when it ends. Ray calls it in the driver, which also makes
    it the place to tidy the trials' folders when the sweep ends (those this machine sees: on a cluster, a trial's
    folder lies on the node that ran it, unless the logs are on shared storage)."""

    # the trials' run folders (trials_dir/<trial id>), tidied when the sweep ends; None: left as they are. Also what
    # a console restored from the state of a sweep that an earlier vaegen started has, as its __init__ never ran
    trials_dir: Path | None = None

    def __init__(self, metric: str, keys: list[str], base_epochs: int, trials_dir: Path | None = None):
        self.metric = metric
        self.keys = keys  # the searched key paths
        self.base_epochs = base_epochs
        self.trials_dir = trials_dir
        self.best: dict[str, tuple[float, int]] = {}  # trial id: (its best value, that epoch)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._say(f"trial {trial.trial_id} started: {format_params(self._params(trial))}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        value = result.get(self.metric)
        if value is None:
            return
        trial_id, epoch = trial.trial_id, result["epoch"]
        if trial_id not in self.best or value < self.best[trial_id][0]:
            self.best[trial_id] = (value, epoch)
        leader = min(self.best, key=lambda t: self.best[t][0])  # ties: the trial that got there first
        self._say(f"trial {trial_id}  epoch {epoch}/{self._epochs(trial)}  {self.metric} {value:.4g}  "
                  f"best so far {self.best[leader][0]:.4g} ({leader})")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        epochs = self._epochs(trial)
        last_epoch = trial.last_result.get("epoch") or 0
        status = trial_status(False, last_epoch, epochs)
        how = "finished" if status == "finished" else "stopped early by ASHA"
        best = self.best.get(trial.trial_id)
        scored = f", best {self.metric} {best[0]:.4g} (epoch {best[1]})" if best else ""
        self._say(f"trial {trial.trial_id} {how}: {last_epoch} of {epochs} epochs{scored}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._say(f"trial {trial.trial_id} failed: {_trial_error(trial)}")

    def on_experiment_end(self, trials: list, **info) -> None:
        # not in on_trial_complete: Ray calls that before it asks the trial's process to stop, and the process
        # writes its last files after; here every trial's process of this run has ended (or was killed)
        if self.trials_dir is None:
            return
        for trial in trials:
            run_dir = self.trials_dir / trial.trial_id
            if run_dir.is_dir():
                try:
                    tidy_trial_folder(run_dir)
                except OSError as exc:  # a leftover file is not worth failing a finished sweep for
                    warnings.warn(f"could not tidy {run_dir} (a stopped trial's half-written files stay): {exc}",
                                  stacklevel=2)

    def get_state(self) -> dict:
        return {"best": dict(self.best)}

    def set_state(self, state: dict) -> None:
        self.best = dict(state["best"])

    def _params(self, trial) -> dict[str, Any]:
        return {key: trial.config.get(key) for key in self.keys}

    def _epochs(self, trial) -> int:
        return trial_epochs(self._params(trial), self.base_epochs)

    @staticmethod
    def _say(line: str) -> None:
        print(line, flush=True)


def _trial_error(trial) -> str:
    """A failed trial's error in one line, from the files Ray has just written for it on this machine (Ray's own
    Trial.get_pickled_error, which reads the trial's storage, returned nothing yet when this callback ran)."""
    import ray.cloudpickle

    if trial.pickled_error_file and Path(trial.pickled_error_file).is_file():
        return _first_line(ray.cloudpickle.loads(Path(trial.pickled_error_file).read_bytes()))
    if trial.error_file and Path(trial.error_file).is_file():
        return _first_line(RuntimeError(Path(trial.error_file).read_text()))
    return "its error is in Ray's log above"


class _VaegenTrialErrors(logging.Filter):
    """Ray logs a failed trial with its traceback. A vaegen error's message says all there is, and SweepConsole
    has said it in one line; any other error (a bug) keeps Ray's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(getattr(error, "cause", error), VaegenError)


class _SaidByVaegen(logging.Filter):
    """Drops a logger's lines that hold one of `said`: what vaegen's console and CLI say in their own words."""

    def __init__(self, *said: str):
        super().__init__()
        self.said = said

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(words in message for words in self.said)


def quiet_ray_and_optuna() -> Callable[[], None]:
    """Ray's and Optuna's console output during a sweep, less what SweepConsole and the CLI say better; returns
    what puts it back.

    Off: Ray's status tables (its new output engine prints them and a TensorBoard hint at any verbosity, the
    legacy one nothing at verbose=0), the INFO lines of Ray's driver (`Started a local Ray instance`, `Wrote the
    latest version of all result files`: ray.init(logging_level=WARNING) sets the level, put back here) and of
    Optuna (`A new study created in memory`), Ray's `Trials did not complete: [...]` (the console has said which
    trial failed and the table says it again), its `Tuner.restore` advice on Ctrl+C (the CLI names `vaegen tune
    --resume`), a trial's vaegen error with its traceback (said in one line), and the notice that the cluster uses
    token authentication, Ray's default (Ray still warns when it is off). Ray's other warnings and errors stay: a
    trial's unexpected exception with its traceback, a cluster that fails to start."""
    import optuna

    filters = {
        "ray.tune.execution.tune_controller": _VaegenTrialErrors(),
        "ray.tune.tune": _SaidByVaegen("Trials did not complete", "Resume experiment with"),
        "ray._private.authentication.authentication_token_setup": _SaidByVaegen(
            "Token authentication is enabled for this Ray cluster"),
    }
    ray_level, optuna_level = logging.getLogger("ray").level, optuna.logging.get_verbosity()
    users_output_engine = os.environ.get("RAY_AIR_NEW_OUTPUT")
    for name, said in filters.items():
        logging.getLogger(name).addFilter(said)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"

    def restore() -> None:
        for name, said in filters.items():
            logging.getLogger(name).removeFilter(said)
        optuna.logging.set_verbosity(optuna_level)
        logging.getLogger("ray").setLevel(ray_level)
        if users_output_engine is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = users_output_engine

    return restore


def no_trial_succeeded(grid, trials: list[TrialSummary], sweep: Sweep) -> NoTrialSucceeded:
    first = next(result for result in grid if result.error is not None)  # the grid lists trials in start order
    trial = next(t for t in trials if t.trial == Path(first.path).name)
    cause = getattr(first.error, "cause", first.error)
    return NoTrialSucceeded(
        f"no trial of sweep {sweep.name!r} succeeded: all {len(trials)} failed, so there is no best model. The first, "
        f"{trial.trial} ({format_params(trial.params)}), failed with: {trial.error} Fix what it names and start a "
        f"new sweep with --set tune.name=NEW_NAME (every trial's error is in {sweep.sweep_dir / 'summary.csv'}).",
        exit_code=getattr(cause, "exit_code", 1),
    )


def cluster_address(address: str | None) -> tuple[str, str | None]:
    """Where the sweep's Ray runs, and what named that address (None: nothing did). --address, else RAY_ADDRESS,
    else a Ray instance of the sweep's own, started here: plain ray.init() would join any cluster `ray start` left
    running on this machine, with its resources and its other jobs, without saying so."""
    if address:
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return "local", None


def start_ray(ray, address: str, given_as: str | None) -> None:
    """ray.init, its driver's console quiet but for warnings (the trials log to their own train.log)."""
    if given_as is None:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        return
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:  # something listens there, but not Ray's GCS
        raise unreachable(address, _first_line(exc), given_as) from None


def check_reachable(address: str, timeout_s: float = 5.0, given_as: str = "--address") -> None:
    """Fail fast on a cluster address nothing listens at: ray.init waits minutes for it, printing timeouts.
    `given_as` (--address or RAY_ADDRESS) is what the errors name, so that they say what to change."""
    if address in ("auto", "local"):  # Ray finds (or starts) these itself
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        example = "--address 10.0.0.5:6379" if given_as == "--address" else f"{given_as}=10.0.0.5:6379"
        raise ConfigError(
            f"{given_as} {address!r} is not HOST:PORT. Give the address `ray start --head` printed on the head node "
            f"(e.g. {example}), or {_run_here(given_as)}."
        )
    # a cluster with TLS on (RAY_USE_TLS) answers a plain-text preface with an alert or not at all: connecting is the test
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as connection:
            answer = b"" if tls else _first_http2_frame(connection)
    except TimeoutError:
        raise unreachable(address, f"no answer within {timeout_s:g} s", given_as) from None
    except OSError as exc:
        raise unreachable(address, exc.strerror or str(exc), given_as) from None
    if not tls and (len(answer) < 9 or answer[3] != HTTP2_SETTINGS):
        heard = "a web page's answer (Ray's dashboard is such a port, 8265 by default)" if answer.startswith(b"HTTP/") else (
            f"{answer!r}, not gRPC" if answer else "nothing")
        raise ConfigError(
            f"{given_as} {address}: something listens there, but not a Ray cluster: asked as Ray's GCS is asked, it "
            f"answered {heard}, and ray.init would wait there for minutes. Give the address `ray start --head` "
            f"printed on the head node (its GCS port, 6379 unless --port chose another; ray://HOST:10001 for Ray "
            f"Client), or {_run_here(given_as)}."
        )


# Ray's GCS (and Ray Client) speak gRPC, HTTP/2 underneath: a client's connection preface is answered with the
# server's SETTINGS frame (a 9-byte frame header whose fourth byte is the frame type, 4)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def _first_http2_frame(connection: socket.socket) -> bytes:
    connection.sendall(HTTP2_PREFACE)
    answer = b""
    try:
        while len(answer) < 9 and (chunk := connection.recv(9 - len(answer))):
            answer += chunk
    except TimeoutError:  # listening, silent: what ray.init would wait on
        pass
    return answer


def unreachable(address: str, reason: str, given_as: str = "--address") -> ConfigError:
    return ConfigError(
        f"{given_as} {address}: no Ray cluster answers there ({reason}). Start one with `ray start --head` on the "
        f"head node and give the address it prints, check the host, port and firewall, or {_run_here(given_as)}."
    )


def _run_here(given_as: str) -> str:
    return f"{'unset' if given_as == 'RAY_ADDRESS' else 'drop'} {given_as} to run the sweep on this machine"


def max_epochs(sweep: Sweep) -> int:
    searched = sweep.settings.space.get("train.epochs")
    if searched is None:
        return sweep.base.train.epochs
    return max(searched.choice) if searched.kind == "choice" else searched.int[1]  # whole numbers: load_sweep checked


def _trial_id(trial) -> str:
    return trial.trial_id


def _to_searched(sweep: Sweep, key: str, value: Any) -> Any:
    """A points_to_evaluate value in the form the searcher holds it (list choices as YAML text)."""
    distribution = sweep.settings.space[key]
    if distribution.kind == "choice" and not _is_scalar(value):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return value


def _import_ray():
    try:
        import optuna  # noqa: F401
        import ray
        from ray import tune
    except ImportError as exc:
        raise VaegenError(
            f"vaegen tune needs Ray Tune and Optuna ({exc.name} is not installed). Install them with "
            f"`pip install 'vaegen[tune]'` (or `pip install 'ray[tune]' optuna`)."
        ) from None
    return ray, tune


# ---------------------------------------------------------------------------------------
# Summary: table, CSV, plot, best model


def summarize(grid, sweep: Sweep) -> list[TrialSummary]:
    # Ray exposes no per-trial status publicly, only counts; with every trial ended (not paused or
    # interrupted), a trial that stopped before train.epochs without an error was stopped by ASHA
    all_ended = len(grid) >= sweep.settings.tune.num_samples and grid.num_terminated + grid.num_errors == len(grid)
    trials = []
    for result in grid:
        params = {key: result.config.get(key) for key in sweep.settings.space}
        history = result.metrics_dataframe
        best = epoch = None
        if history is not None and sweep.metric in history.columns:
            scored = history.dropna(subset=[sweep.metric])
            if len(scored):
                row = scored.loc[scored[sweep.metric].idxmin()]
                best, epoch = float(row[sweep.metric]), int(row["epoch"])
        last_epoch = (result.metrics or {}).get("epoch") or 0
        epochs = trial_epochs(params, sweep.base.train.epochs)
        status = trial_status(result.error is not None, last_epoch, epochs, all_ended)
        error = _first_line(result.error) if result.error is not None else ""
        trials.append(TrialSummary(Path(result.path).name, params, best, epoch, status, error))
    # best first; unscored (failed, or interrupted before an evaluation) last
    return sorted(trials, key=lambda t: (t.best is None, t.best if t.best is not None else 0.0, t.trial))


def _first_line(error: BaseException) -> str:
    """The vaegen message (or the exception's last line) from Ray's wrapped traceback."""
    cause = getattr(error, "cause", None) or error
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(cause).__name__


def write_summary(trials: list[TrialSummary], sweep: Sweep) -> Path:
    path = sweep.sweep_dir / "summary.csv"
    keys = list(sweep.settings.space)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", *keys, f"best_{sweep.metric}", "epoch", "status", "error"])
        for t in trials:
            writer.writerow([t.trial, *(t.params.get(k) for k in keys), "" if t.best is None else t.best,
                             "" if t.epoch is None else t.epoch, t.status, t.error])
    return path


def format_table(trials: list[TrialSummary], sweep: Sweep) -> str:
    keys = list(sweep.settings.space)
    header = ["trial", *keys, sweep.metric, "epoch", "status"]
    rows = [[t.trial, *(_short(t.params.get(k)) for k in keys), "-" if t.best is None else f"{t.best:.4g}",
             "-" if t.epoch is None else str(t.epoch), t.status + (f": {t.error}" if t.error else "")] for t in trials]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    widths[-1] = 0  # the status column may hold a long error: never pad it
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
    failed = sum(t.status == "failed" for t in trials)
    if failed:
        lines.append(f"\n{failed} of {len(trials)} trials failed; the sweep went on without them (errors above and "
                     f"in {sweep.sweep_dir / 'summary.csv'}).")
    return "\n".join(lines)


def plot_sweep(trials: list[TrialSummary], sweep: Sweep) -> Path | None:
    """One panel per searched key: the metric of every scored trial against the value it tried."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    scored = [t for t in trials if t.best is not None]
    if not scored:
        return None
    keys = list(sweep.settings.space)
    best = min(scored, key=lambda t: t.best)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        distribution = sweep.settings.space[key]
        if distribution.kind == "choice":
            labels = [str(value) for value in to_domain(distribution).categories]
            position = {label: index for index, label in enumerate(labels)}
            xs = [position[str(t.params[key])] for t in scored]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 4 else 0)
            best_x = position[str(best.params[key])]
        else:
            xs = [t.params[key] for t in scored]
            best_x = best.params[key]
            if distribution.kind == "loguniform":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on short ranges
                # the values tried often lie within a decade, where matplotlib labels no tick at all
                ticks = round_log_ticks(min(xs), max(xs))
                ax.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
        colors = ["tab:blue" if t.status == "finished" else "tab:gray" for t in scored]
        ax.scatter(xs, [t.best for t in scored], c=colors, s=30)
        ax.scatter([best_x], [best.best], marker="*", s=220, c="tab:orange", zorder=3, label=f"best ({best.trial})")
        ax.set_xlabel(key)
        ax.margins(x=0.12, y=0.12)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {sweep.metric} (lower is better)")
    axes[0][0].legend(fontsize=8)
    failed = sum(t.status == "failed" for t in trials)
    stopped = " (gray: stopped early)" if any(t.status != "finished" for t in scored) else ""
    fig.suptitle(f"{sweep.name}: {len(scored)} scored trials{stopped}" + (f", {failed} failed" if failed else ""))
    fig.tight_layout()
    name = "fid_vs_params.png" if sweep.base.output.select == "fid" else f"{sweep.metric}_vs_params.png"
    path = sweep.sweep_dir / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def round_log_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """At most `most` round values in [low, high] for a log axis: 1, 2 and 5 times powers of ten, or
    1-9 times them when those leave fewer than two."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for multiples in ((1, 2, 5), range(1, 10)):
        ticks = [m * 10.0**k for k in decades for m in multiples if low <= m * 10.0**k <= high]
        if len(ticks) >= 2:
            return ticks[:: math.ceil(len(ticks) / most)]
    return [low, high] if low != high else [low]


def copy_best(grid, trials: list[TrialSummary], sweep: Sweep) -> Path | None:
    """The best trial's best checkpoint (kept by Ray in its storage) into <best_dir>/<sweep>-best/."""
    scored = [t for t in trials if t.best is not None]
    if not scored:
        return None
    best = min(scored, key=lambda t: t.best)
    result = next(r for r in grid if Path(r.path).name == best.trial)
    checkpoints = result.best_checkpoints or ([(result.checkpoint, {})] if result.checkpoint else [])
    if not checkpoints:
        return None
    target = sweep.best_dir
    staging = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(staging, ignore_errors=True)
    checkpoints[0][0].to_directory(str(staging))
    (staging / "sweep.json").write_text(json.dumps(
        {"sweep": sweep.name, "trial": best.trial, "params": best.params, sweep.metric: best.best, "epoch": best.epoch,
         "summary": str(sweep.sweep_dir / "summary.csv")}, indent=2) + "\n")
    # swap whole folders, so a reader never sees half of an old model and half of a new one
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target
