"""`vaegen tune`: hyper-parameter sweeps with Ray Tune (scheduling, fault tolerance, clusters) and Optuna (TPE);
the sweep file and its space are vaegen.tuning.space.

A sweep YAML names a base train config, `overrides:` for every trial and a `space:` over config key paths
(configs/tune_quick.yaml); each trial is an ordinary `vaegen.training.loop.train` run. A sweep writes
`<logs_dir>/<name>/` (trials/, summary.csv, the metric-vs-parameter plot, Ray's state) and `<best_dir>/<name>-best/`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vaegen.errors import ConfigError, TrainingDiverged, VaegenError, plural
from vaegen.tuning.space import Sweep, SweepConfig, sampled, to_domain, trial_config

if TYPE_CHECKING:
    import pandas as pd


@contextmanager
def environment(values: dict[str, str]):
    """These environment variables set for a block, and only these put back (Ray sets others of its own)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ray.init's wait for an answer from a cluster (Ray's default: 30 s), read as Ray is imported; a user's value wins
ANSWER_TIMEOUT = {"RAY_py_gcs_connect_timeout_s": os.environ.get("RAY_py_gcs_connect_timeout_s", "5")}

with environment(ANSWER_TIMEOUT):
    try:  # Ray is the `tune` extra; without it run_sweep says how to install it
        from ray.tune import Callback as _RayCallback
    except ImportError:
        _RayCallback = object

log = logging.getLogger(__name__)  # the sweep's console lines (sweep_console() prints them)


# --- One trial
def run_trial(params: dict[str, Any], sweep: Sweep, metric: str) -> None:
    """Ray Tune's function trainable, reporting `metric`; a restored sweep continues a trial from its last.pt."""
    import torch
    from ray import tune

    from vaegen.training.loop import RunPaths, train
    from vaegen.training.tracking import draw_curves

    torch.set_num_threads(max(1, int(sweep.settings.tune.resources.cpu)))
    trial_id = tune.get_context().get_trial_id()
    config = trial_config(sweep, params, trial_id)
    paths = RunPaths(trial_id, sweep.trials_dir / trial_id, sweep.trials_dir / trial_id / "best")
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    (paths.run_dir / "params.json").write_text(json.dumps(params, indent=2) + "\n")

    def report(row: dict, improved: bool) -> None:
        if row.get(metric) is None:
            return  # epochs without an evaluation have no score to report
        draw_curves(paths.run_dir, title=f"trial {trial_id}")  # ASHA may stop this trial inside tune.report
        metrics = {key: row[key] for key in ("epoch", metric, "val_nelbo") if key in row}
        # Ray keeps the checkpoint beside the trial's results, so the sweep's best outlives this node
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(paths.best_dir)) if improved else None)

    try:
        train(config, paths, resume=paths.last_checkpoint.is_file(), on_epoch=report, echo=False)
    except TrainingDiverged as exc:  # a sweep's fix goes in the sweep file, not `vaegen train --resume`
        raise TrainingDiverged(f"{exc.diagnosis} (in the sweep's `space:` or `overrides:`).") from None


def trial_epochs(params: dict[str, Any], base_epochs: int) -> int:
    return int(params.get("train.epochs") or base_epochs)


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def _first_line(error: BaseException) -> str:
    """The vaegen message (or the exception's last line) from Ray's wrapped traceback."""
    cause = getattr(error, "cause", None) or error
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(cause).__name__


def _trial_id(trial) -> str:  # module level: Ray pickles it into the sweep's state
    return trial.trial_id


# --- The console: a line when a trial starts, one per evaluation, one when it ends, in place of Ray's tables
class SweepConsole(_RayCallback):
    """Runs in the driver; Ray keeps it in the sweep's state, so a resumed "best so far" counts earlier trials."""

    trials_dir: Path | None = None  # None: leave the folders as they are (also a console an older vaegen pickled)

    def __init__(self, metric: str, keys: list[str], base_epochs: int, trials_dir: Path | None = None):
        self.metric, self.keys, self.base_epochs, self.trials_dir = metric, keys, base_epochs, trials_dir
        self.best: dict[str, tuple[float, int]] = {}  # trial id: (its best value, that epoch)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        log.info("trial %s started: %s", trial.trial_id, format_params({k: trial.config.get(k) for k in self.keys}))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        value = result.get(self.metric)
        if value is None:
            return
        trial_id, epoch = trial.trial_id, result["epoch"]
        if trial_id not in self.best or value < self.best[trial_id][0]:
            self.best[trial_id] = (value, epoch)
        leader = min(self.best, key=lambda t: self.best[t][0])  # ties: the trial that got there first
        log.info("trial %s  epoch %s/%s  %s %.4g  best so far %.4g (%s)", trial_id, epoch,
                 trial_epochs(trial.config, self.base_epochs), self.metric, value, self.best[leader][0], leader)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        epochs, last_epoch = trial_epochs(trial.config, self.base_epochs), trial.last_result.get("epoch") or 0
        best = self.best.get(trial.trial_id)
        scored = f", best {self.metric} {best[0]:.4g} (epoch {best[1]})" if best else ""
        log.info("trial %s %s: %s of %s epochs%s", trial.trial_id,
                 "finished" if last_epoch >= epochs else "stopped early by ASHA", last_epoch, epochs, scored)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        import ray.cloudpickle

        # read here, where Ray has just written it (Trial.get_pickled_error reads the storage, empty until later)
        error = "its error is in Ray's log above"
        if trial.pickled_error_file and Path(trial.pickled_error_file).is_file():
            error = _first_line(ray.cloudpickle.loads(Path(trial.pickled_error_file).read_bytes()))
        log.info("trial %s failed: %s", trial.trial_id, error)

    def on_experiment_end(self, trials: list, **info) -> None:
        """Tidy trials whose process Ray ended (often while drawing curves.png): .tmp files gone, curves redrawn."""
        from vaegen.training.tracking import draw_curves

        for run_dir in (self.trials_dir / trial.trial_id for trial in trials if self.trials_dir is not None):
            try:
                if not run_dir.is_dir():
                    continue
                interrupted_curves = False
                for leftover in run_dir.rglob(".*.tmp"):  # atomic_write's temporary files: .<name>.<random>.tmp
                    leftover.unlink(missing_ok=True)
                    interrupted_curves |= leftover.name.startswith(".curves.png.")
                if interrupted_curves or not (run_dir / "curves.png").is_file():
                    draw_curves(run_dir, title=f"trial {run_dir.name}")
            except OSError as exc:  # a leftover file is not worth failing a finished sweep for
                warnings.warn(f"could not tidy {run_dir} (a stopped trial's half-written files stay): {exc}",
                              stacklevel=2)

    def get_state(self) -> dict:
        return {"best": dict(self.best)}

    def set_state(self, state: dict) -> None:
        self.best = dict(state["best"])


# Ray's lines that the console or the CLI says in its own words (Ray's other warnings and errors stay), and where
SAID_BY_VAEGEN = ("Trials did not complete", "Resume experiment with", "Token authentication is enabled")
QUIETED_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune",
                   "ray._private.authentication.authentication_token_setup")
# Ray's legacy output engine prints no status table at verbose=0 (the new one prints them at any verbosity); keeping
# only the best checkpoint makes Ray snapshot its state at each improvement, and warn that it does
RAY_CONSOLE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def _not_said_by_vaegen(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(getattr(error, "cause", error), VaegenError):
        return False  # a trial's vaegen error with its traceback: the console has said it in one line
    return not any(words in record.getMessage() for words in SAID_BY_VAEGEN)


@contextmanager
def sweep_console():
    """The sweep's lines on stdout; Ray's and Optuna's info lines, Ray's tables and what vaegen says itself, off."""
    import optuna

    handler, ray_logger = logging.StreamHandler(sys.stdout), logging.getLogger("ray")
    saved = (log.level, log.propagate, ray_logger.level, optuna.logging.get_verbosity())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # printed once, here, whatever handlers the root logger has
    for name in QUIETED_LOGGERS:
        logging.getLogger(name).addFilter(_not_said_by_vaegen)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with environment(RAY_CONSOLE):
            yield
    finally:
        for name in QUIETED_LOGGERS:
            logging.getLogger(name).removeFilter(_not_said_by_vaegen)
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        ray_logger.setLevel(saved[2])  # ray.init(logging_level=...) sets it
        optuna.logging.set_verbosity(saved[3])


# --- Ray: where it runs, and the tuner
# one attempt at a given address (Ray's default: 20), read by ray.init: with ANSWER_TIMEOUT, an address where no
# cluster answers is named within ~16 s (5 s to connect, 5 s for Ray's event channel, 5 s for an answer, a pause)
CONNECT_ATTEMPTS = "RAY_gcs_server_port_wait_time_s"


@contextmanager
def ray_session(address: str | None):
    """Ray at --address, else RAY_ADDRESS, else a Ray of the sweep's own (not a cluster `ray start` left running)."""
    import ray

    given_as = "--address" if address else "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else None
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if given_as is None:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            try:
                with environment({CONNECT_ATTEMPTS: os.environ.get(CONNECT_ATTEMPTS, "1")}):
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, ValueError) as exc:  # ValueError: Ray's "Invalid address format"
                here = f"{'unset' if given_as == 'RAY_ADDRESS' else 'drop'} {given_as} to run the sweep on this machine"
                raise ConfigError(f"{given_as} {address}: no Ray cluster answers there ({_first_line(exc)}). Start one "
                                  f"with `ray start --head` on the head node and give the address it prints (e.g. "
                                  f"10.0.0.5:6379), check the host, port and firewall, or {here}.") from None
        yield
    finally:
        ray.shutdown()


def new_tuner(sweep: Sweep, trainable):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    settings = sweep.settings.tune
    points = [{key: sampled(value) for key, value in point.items()} for point in settings.points_to_evaluate]
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials)
    searcher = OptunaSearch(metric=sweep.metric, mode="min", points_to_evaluate=points or None, sampler=sampler)
    scheduler = None
    if settings.scheduler == "asha":  # max_t: ASHA stops every trial there, also one that searched more epochs
        scheduler = ASHAScheduler(time_attr="epoch", max_t=sweep.max_epochs, grace_period=settings.grace_period,
                                  reduction_factor=settings.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space={key: to_domain(distribution) for key, distribution in sweep.settings.space.items()},
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode="min", search_alg=searcher, scheduler=scheduler,
            num_samples=settings.num_samples, max_concurrent_trials=settings.max_concurrent,
            trial_name_creator=_trial_id, trial_dirname_creator=_trial_id,  # Ray's trial folder named as vaegen's
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=sweep.storage, verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=sweep.metric,
                                                    checkpoint_score_order="min"),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            callbacks=[SweepConsole(sweep.metric, list(sweep.settings.space), sweep.base.train.epochs,
                                    sweep.trials_dir)],
        ),
    )


# --- The sweep
class NoTrialSucceeded(VaegenError):
    """Every trial failed; the sweep exits with the first trial error's code (3 when the loss diverged)."""


@dataclass(frozen=True)
class SweepResult:
    summary: pd.DataFrame  # summary.csv's rows, best first
    complete: bool
    summary_csv: Path
    plot: Path | None
    best_dir: Path | None

    @property
    def trials(self) -> list[pd.Series]:
        return [row for _, row in self.summary.iterrows()]


def run_sweep(sweep: Sweep, resume: bool = False, address: str | None = None) -> SweepResult:
    try:
        import optuna  # noqa: F401
        from ray import tune
    except ImportError as exc:
        raise VaegenError(f"vaegen tune needs Ray Tune and Optuna ({exc.name} is not installed). Install them with "
                          f"`pip install 'vaegen[tune]'` (or `pip install 'ray[tune]' optuna`).") from None
    from vaegen.data.dataset import SWEEP_SETTINGS, load_splits

    exists = tune.Tuner.can_restore(sweep.experiment_path)
    if resume and not exists:
        raise ConfigError(f"--resume: there is no sweep {sweep.name!r} to continue at {sweep.experiment_path}. Start "
                          f"it without --resume.")
    if exists and not resume:
        raise ConfigError(f"a sweep named {sweep.name!r} already exists at {sweep.experiment_path}. Continue it with "
                          f"--resume, or start another with --set tune.name=NEW_NAME.")
    # the images decoded into the shared cache once, not by every trial; its errors name overrides.data.* and come
    # before the evaluation's warnings (sweep.metric's, which Ray would otherwise interleave)
    load_splits(sweep.base.data, sweep.base.train.seed, SWEEP_SETTINGS)
    resources = sweep.settings.tune.resources
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep, metric=sweep.metric),
                                    {"cpu": resources.cpu, "gpu": resources.gpu})
    with sweep_console(), ray_session(address):
        record_sweep(sweep, resume)
        log.info(f"{'resuming' if resume else 'starting'} sweep {sweep.name}: "
                 f"{plural(sweep.settings.tune.num_samples, 'trial')}, {sweep.settings.tune.max_concurrent} at a "
                 f"time, in {sweep.sweep_dir}/  (TensorBoard: tensorboard --logdir {sweep.trials_dir})")
        if resume:
            # a sweep started by release 0.1.0 pickled the flat module's name into Ray's state
            sys.modules.setdefault("vaegen.tune", sys.modules[__name__])
            tuner = tune.Tuner.restore(sweep.experiment_path, trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = new_tuner(sweep, trainable)
        grid = tuner.fit()
        summary = summarize(grid, sweep)
        summary.to_csv(sweep.sweep_dir / "summary.csv", index=False)
        best_dir, plot = copy_best(grid, summary, sweep), plot_sweep(grid, summary, sweep)
    if len(summary) and (summary["status"] == "failed").all():
        raise no_trial_succeeded(grid, sweep)
    complete = len(summary) >= sweep.settings.tune.num_samples and not (summary["status"] == "not finished").any()
    return SweepResult(summary, complete, sweep.sweep_dir / "summary.csv", plot, best_dir)


def record_sweep(sweep: Sweep, resume: bool) -> None:
    """sweep.yaml, the sweep as it started; --resume warns when the sweep given now differs from it."""
    started_with = sweep.sweep_dir / "sweep.yaml"
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        started_with.write_text(sweep_record(sweep.settings))
    elif started_with.is_file() and read_sweep_record(started_with) != sweep.settings:
        warnings.warn(f"the sweep (its file and --set values) changed since this sweep started ({started_with}): "
                      f"--resume continues the search Ray recorded, but the trials it resumes or starts train with the "
                      f"settings given now, and the summary judges finished trials by them (more train.epochs turn "
                      f"them into stopped ones). Resume with the command the sweep started with, or start a new sweep "
                      f"(--set tune.name=NEW_NAME) to search something else.", stacklevel=3)


def sweep_record(settings: SweepConfig) -> str:
    """The sweep as YAML: every default written out, unset fields (nulls) not (leaving one out reads back the same)."""
    return yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True), sort_keys=False)


def read_sweep_record(path: Path) -> SweepConfig | None:
    """sweep.yaml read back; None where it no longer reads as a sweep (written by another vaegen version)."""
    try:
        return SweepConfig.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def no_trial_succeeded(grid, sweep: Sweep) -> NoTrialSucceeded:
    first = next(result for result in grid if result.error is not None)  # the grid lists trials in start order
    params = {key: first.config.get(key) for key in sweep.settings.space}
    error = NoTrialSucceeded(
        f"no trial of sweep {sweep.name!r} succeeded: all {len(grid)} failed, so there is no best model. The first, "
        f"{Path(first.path).name} ({format_params(params)}), failed with: {_first_line(first.error)} Fix what it "
        f"names and start a new sweep with --set tune.name=NEW_NAME (every trial's error is in "
        f"{sweep.sweep_dir / 'summary.csv'})."
    )
    error.exit_code = getattr(getattr(first.error, "cause", first.error), "exit_code", 1)
    return error


# --- Summary: Ray's result dataframe, Optuna's plot, the best model
def summarize(grid, sweep: Sweep) -> pd.DataFrame:
    """One row per trial, best first: values, status, error, and its best score and epoch from Ray's dataframe."""
    import pandas as pd

    ended = len(grid) >= sweep.settings.tune.num_samples and grid.num_terminated + grid.num_errors == len(grid)
    rows = []
    for result in grid:
        params = {key: result.config.get(key) for key in sweep.settings.space}
        if result.error is not None:
            status = "failed"
        elif ((result.metrics or {}).get("epoch") or 0) >= trial_epochs(params, sweep.base.train.epochs):
            status = "finished"
        else:  # Ray says no trial's status, only counts: with all ended, one short of its epochs was stopped
            status = "stopped early" if ended else "not finished"
        error = "" if result.error is None else _first_line(result.error)
        rows.append({"trial": Path(result.path).name, **params, "status": status, "error": error})
    best = grid.get_dataframe(filter_metric=sweep.metric, filter_mode="min")
    best = best.reindex(columns=["trial_id", sweep.metric, "epoch"])
    best.columns = ["trial", f"best_{sweep.metric}", "epoch"]
    summary = pd.DataFrame(rows, columns=["trial", *sweep.settings.space, "status", "error"])
    summary = summary.merge(best, on="trial", how="left").astype({"epoch": "Int64"})
    summary = summary.sort_values([f"best_{sweep.metric}", "trial"], na_position="last", ignore_index=True)
    return summary[["trial", *sweep.settings.space, f"best_{sweep.metric}", "epoch", "status", "error"]]


def format_table(trials: list, sweep: Sweep) -> str:
    """The summary for the console (the errors are in the lines above it and in summary.csv)."""
    import pandas as pd

    if not trials:
        return "no trial ran"
    table = pd.DataFrame(trials).drop(columns="error")
    table["epoch"] = pd.to_numeric(table["epoch"])  # pandas writes a missing integer as <NA>, a missing float as na_rep
    text = table.to_string(index=False, na_rep="-", float_format="{:.4g}".format)
    if failed := int((table["status"] == "failed").sum()):
        text += (f"\n\n{failed} of {len(table)} trials failed; the sweep went on without them (errors above and in "
                 f"{sweep.sweep_dir / 'summary.csv'}).")
    return text


def plot_sweep(grid, summary: pd.DataFrame, sweep: Sweep) -> Path | None:
    """Optuna's slice plot: the best score of each scored trial against each value it tried."""
    import matplotlib
    import numpy as np
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = summary.dropna(subset=[f"best_{sweep.metric}"])
    if scored.empty:
        return None
    space = OptunaSearch.convert_search_space({key: to_domain(d) for key, d in sweep.settings.space.items()})
    configs = {Path(result.path).name: result.config for result in grid}  # the values as Optuna drew them
    study = optuna.create_study(study_name=sweep.name)
    for _, row in scored.iterrows():
        try:
            study.add_trial(optuna.trial.create_trial(params={key: configs[row["trial"]][key] for key in space},
                                                      distributions=space, value=row[f"best_{sweep.metric}"]))
        except ValueError:  # a points_to_evaluate value outside the space (Optuna tries it) is off its axes
            continue
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental; one trial's axis has no width
        warnings.simplefilter("ignore")
        axes = optuna.visualization.matplotlib.plot_slice(study, target_name=f"best {sweep.metric} (lower is better)")
    for ax in np.ravel(axes):  # matplotlib labels a short log range with long minor labels: turned, they fit
        ax.tick_params(axis="x", which="both", labelrotation=45)
        ax.set_title("")  # Optuna's "Slice Plot", in place of the suptitle below when one setting is searched
    figure = np.ravel(axes)[0].figure
    failed = int((summary["status"] == "failed").sum())
    figure.suptitle(f"{sweep.name}: {plural(len(scored), 'scored trial')}, the best {scored['trial'].iloc[0]}"
                    + (f", {failed} failed" if failed else ""))
    path = sweep.sweep_dir / f"{'fid' if sweep.base.output.select == 'fid' else sweep.metric}_vs_params.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def copy_best(grid, summary: pd.DataFrame, sweep: Sweep) -> Path | None:
    """The best trial's best checkpoint (kept by Ray in its storage) into <best_dir>/<sweep>-best/, with sweep.json."""
    scored = summary.dropna(subset=[f"best_{sweep.metric}"])
    if scored.empty:
        return None
    best, target = scored.iloc[0], sweep.best_dir
    result = next(r for r in grid if Path(r.path).name == best["trial"])
    if not result.best_checkpoints:
        return None
    staging, old = target.with_name(f".{target.name}.incoming"), target.with_name(f".{target.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    result.get_best_checkpoint(sweep.metric, "min").to_directory(str(staging))
    record = {"sweep": sweep.name, "trial": best["trial"],
              "params": {key: result.config.get(key) for key in sweep.settings.space},
              sweep.metric: float(best[f"best_{sweep.metric}"]), "epoch": int(best["epoch"]),
              "summary": str(sweep.sweep_dir / "summary.csv")}
    (staging / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)  # whole folders swapped: a reader never sees half of an old and a new model
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target
