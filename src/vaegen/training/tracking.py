"""Where a run's numbers and pictures go: metrics.jsonl (one row per epoch, the source of truth), TensorBoard, W&B.
Each metrics.jsonl row also carries `wall_s`, the run's wall-clock seconds at the epoch's end (setup excluded, summed
over resumes), which `vaegen compare` plots against."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from vaegen.checkpoint import storage_error, write_text_atomic
from vaegen.config import Config
from vaegen.plots import plot_curves


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def draw_curves(run_dir: Path, title: str) -> None:
    """run_dir/curves.png from its metrics.jsonl (nothing before the first epoch's row)."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    if rows:
        plot_curves(rows, run_dir / "curves.png", title=title)


class Tracker:
    """Logs epoch rows and images. On resume, rows after the checkpoint's epoch are dropped."""

    def __init__(self, run_dir: Path, config: Config, run_name: str, start_epoch: int = 0):
        self.metrics_path = run_dir / "metrics.jsonl"
        kept = [row for row in read_metrics(self.metrics_path) if row["epoch"] <= start_epoch]
        write_text_atomic(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
        # a run resumed from rows without wall_s (an older vaegen) cannot know its past time, so it writes none
        self.wall_offset = kept[-1].get("wall_s") if kept else 0.0
        # purge_step drops TensorBoard events logged after the checkpoint by an interrupted run
        self.tensorboard = SummaryWriter(run_dir / "tensorboard", purge_step=start_epoch + 1 if start_epoch else None)
        self.wandb_run = _start_wandb(run_dir, config, run_name) if config.logging.wandb != "disabled" else None
        self.started = time.perf_counter()  # after W&B's start, which may wait up to 30 s for its server: setup

    def log_epoch(self, row: dict) -> None:
        epoch = row["epoch"]
        timed = row if self.wall_offset is None else {**row, "wall_s": self.wall_offset + time.perf_counter() - self.started}
        try:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(timed) + "\n")
        except OSError as exc:  # a full disk is one paragraph, like a failed checkpoint write
            raise storage_error(self.metrics_path, exc) or exc
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key, value, epoch)
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=epoch)

    def log_image(self, tag: str, image: Image.Image, epoch: int) -> None:
        """`image`: the picture as written beside the run (PIL, RGB or L), class names and enlargement included."""
        array = np.asarray(image)  # uint8: TensorBoard takes it as 0-255
        self.tensorboard.add_image(tag, array, epoch, dataformats="HWC" if array.ndim == 3 else "HW")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(image)}, step=epoch)

    def flush(self) -> None:
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _start_wandb(run_dir: Path, config: Config, run_name: str):
    try:
        import wandb
    except ImportError:
        warnings.warn("logging.wandb is set but wandb is not installed (pip install wandb); logging to TensorBoard only.")
        return None
    settings = dict(project=config.logging.wandb_project, name=run_name, id=run_name.replace(".", "-"), resume="allow",
                    dir=str(run_dir), config=config.model_dump(mode="json"))
    # wait at most 30 s for the server (W&B's default is 90), unless $WANDB_INIT_TIMEOUT says otherwise
    timeout = {} if os.environ.get("WANDB_INIT_TIMEOUT") else {"init_timeout": 30}
    try:
        return wandb.init(mode=config.logging.wandb, settings=wandb.Settings(**timeout), **settings)
    except Exception as exc:
        if config.logging.wandb != "online":
            raise
        # a run must not die because the W&B server is unreachable; sync later with `wandb sync`
        warnings.warn(f"W&B online logging failed ({_first_line(exc)}); falling back to offline logging in "
                      f"{run_dir}/wandb. Upload it later with `wandb sync {run_dir}/wandb/offline-run-*`.")
    wandb.teardown()  # the failed online run still holds the run id in W&B's service ("run ID ... is in use")
    try:
        return wandb.init(mode="offline", **settings)
    except Exception as exc:  # e.g. a W&B service this process shares but cannot tear down
        warnings.warn(f"W&B offline logging failed too ({_first_line(exc)}); this run logs to TensorBoard and "
                      "metrics.jsonl only.")
        return None


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
