"""Run folders (logs/<name>, best_models/<name>): their names, and the lock that keeps a second run out of one."""

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
    """The first free `<stem>-<date>-<time>[-N]`; its run folder's atomic mkdir settles runs started in one second."""
    make_output_folder(config.output.logs_dir, "output.logs_dir")
    name = new_run_name(config, config_path)
    for suffix in itertools.count(1):
        paths = RunPaths.for_config(config, name if suffix == 1 else f"{name}-{suffix}")
        if not taken(paths):
            with contextlib.suppress(FileExistsError):  # another run made it first
                paths.run_dir.mkdir()
                return paths


def taken(paths: RunPaths) -> bool:
    """Another run's training state or best model is there (a best model may outlive its logs/ folder)."""
    return paths.last_checkpoint.exists() or (paths.best_dir.is_dir() and any(paths.best_dir.iterdir()))


def name_taken(paths: RunPaths) -> ConfigError:
    if paths.last_checkpoint.exists():
        return ConfigError(
            f"{paths.run_dir} already holds a run named {paths.name}. Continue it with --resume {paths.run_dir}, "
            f"or start another with --set output.run_name=NEW_NAME."
        )
    return ConfigError(
        f"{paths.best_dir} already holds the best model of an earlier run named {paths.name} (with no training "
        f"state in {paths.run_dir} to continue), which a new run would overwrite. Start it with "
        f"--set output.run_name=NEW_NAME, or move that folder away first."
    )


@contextlib.contextmanager
def owned(paths: RunPaths, new: bool):
    """Hold the run's folder for the block (for a `new` run, one no other run has taken); a block that fails
    before writing anything leaves no folder behind."""
    make_output_folder(paths.run_dir, "output.logs_dir")
    lock_file = paths.run_dir / ".lock"
    # an OS file lock: the system releases it when the process ends, kill -9 included
    lock = FileLock(lock_file, is_singleton=True)  # the same lock object for the same file in one process
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"{paths.run_dir} is in use: another vaegen process is training into it now (it holds {lock_file}). "
            f"Wait for that run to end (then continue it with --resume {paths.run_dir}), or start this one with "
            f"--set output.run_name=NEW_NAME."
        ) from None
    try:
        if new and taken(paths):  # finished (or started) by another process between the caller's look and this lock
            raise name_taken(paths)
        yield
    except BaseException:
        if [entry.name for entry in os.scandir(paths.run_dir)] == [lock_file.name]:  # e.g. a data.root typo
            with contextlib.suppress(OSError):
                lock_file.unlink()
                paths.run_dir.rmdir()
        raise
    finally:
        lock.release()
