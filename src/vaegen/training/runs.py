"""Run folders: where a run writes, what it is called, and owning the folder while it trains.

A run writes `logs/<name>/` and `best_models/<name>/`. While it trains it holds an exclusive lock on
`logs/<name>/.lock` (an OS file lock, which the system releases when the process ends, kill -9 included),
so a second run given the same folder stops at once instead of interleaving its epochs, checkpoints and
best model with the first one's. A new run without `output.run_name` takes the first name
`<config>-<date>-<time>[-N]` whose folder it could create itself, so runs started in the same second differ.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout

from vaegen.checkpoint import make_output_folder
from vaegen.config import NAME_MAX, Config
from vaegen.errors import ConfigError


@dataclass(frozen=True)
class RunPaths:
    name: str
    run_dir: Path  # logs/<name>: config, metrics, TensorBoard, grids, checkpoints/last.pt
    best_dir: Path  # best_models/<name>: model.safetensors, config.yaml, metrics.json, samples.png

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / ".lock"

    @classmethod
    def for_config(cls, config: Config, name: str) -> RunPaths:
        return cls(name, config.output.logs_dir / name, config.output.best_dir / name)


def new_run_name(config: Config, config_path: Path | None) -> str:
    if config.output.run_name:
        return config.output.run_name
    stem = config_path.stem if config_path else "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    # a folder name holds 255 bytes: a long config name is cut to leave room for the time and a -N suffix
    room = NAME_MAX - len(stamp) - len("--999")
    stem = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f"{stem}-{stamp}"


def claim_new_name(config: Config, config_path: Path | None) -> RunPaths:
    """A new auto-named run's folders: the first `<stem>-<date>-<time>[-N]` whose run folder this process creates
    (an atomic mkdir, which a run started in the same second loses and moves on) and no best model holds."""
    make_output_folder(config.output.logs_dir, "output.logs_dir")
    name = new_run_name(config, config_path)
    for suffix in itertools.count(1):
        paths = RunPaths.for_config(config, name if suffix == 1 else f"{name}-{suffix}")
        if taken(paths):
            continue
        try:
            paths.run_dir.mkdir()
        except FileExistsError:
            continue
        return paths
    raise AssertionError("unreachable")


def taken(paths: RunPaths) -> bool:
    """A new run may not write into another's folders: its training state, or its best model (whose
    training folder may be gone: a best model outlives a cleaned-up logs/)."""
    return paths.last_checkpoint.exists() or (paths.best_dir.is_dir() and any(paths.best_dir.iterdir()))


def name_taken(paths: RunPaths) -> ConfigError:
    if paths.last_checkpoint.exists():
        return ConfigError(
            f"{paths.run_dir} already holds a run named {paths.name}. Continue it with --resume {paths.run_dir}, "
            f"or start another with --set output.run_name=NEW_NAME."
        )
    return ConfigError(
        f"{paths.best_dir} already holds the best model of an earlier run named {paths.name}, with no training "
        f"state in {paths.run_dir} to continue it from, and a new run would overwrite it. Start the new run with "
        f"--set output.run_name=NEW_NAME, or move that folder away first if you mean to replace it."
    )


@contextlib.contextmanager
def owned(paths: RunPaths, new: bool):
    """Hold the run's folder for the block: refused while another process trains into it, and, for a `new` run,
    while another run's state or best model is there. A block that fails before anything is written leaves no
    folder behind (removed while still held, so never from under a run that has just taken it)."""
    make_output_folder(paths.run_dir, "output.logs_dir")
    lock = FileLock(paths.lock_file, is_singleton=True)  # the same lock object for the same file in one process
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"{paths.run_dir} is in use: another vaegen process is training into it now (it holds {paths.lock_file}), "
            f"and two runs in one folder would mix their epochs, checkpoints and best models. Wait for that run to end "
            f"(then continue it with --resume {paths.run_dir}), or start this one with --set output.run_name=NEW_NAME."
        ) from None
    try:
        if new and taken(paths):  # finished (or started) by another process between the caller's look and this lock
            raise name_taken(paths)
        yield
    except BaseException:
        if [entry.name for entry in os.scandir(paths.run_dir)] == [paths.lock_file.name]:  # e.g. a data.root typo
            with contextlib.suppress(OSError):
                paths.lock_file.unlink()
                paths.run_dir.rmdir()
        raise
    finally:
        lock.release()
