"""Divergence the training loss does not show: NaN samples, a NaN validation loss, non-finite weights after the
last step. Each stops the run with exit 3 as a NaN loss does, and nothing non-finite is ever saved or selected."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch
from fault_helpers import cli_error, run_vaegen
from helpers import sample_subset
from safetensors.torch import load_file

from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state

REPO = Path(__file__).resolve().parents[2]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_samples_stop_the_run_before_the_frechet_math(tmp_path):
    """Samples of a model diverged in its one step reach the evaluation; LAPACK aborted the process on them (exit 139)."""
    data = sample_subset(tmp_path / "data", {"Golden": 18, "Red": 18})  # a batch of 32 is the whole epoch
    args = [
        "train", "--config", str(REPO / "configs" / "quickstart.yaml"), "--set", f"data.root={data}",
        "--set", "data.image_size=16", "--set", "train.epochs=2", "--set", "eval.every=1", "--set", "eval.num_samples=64",
        "--set", "eval.backbone=efficientnet-lite0", "--set", "optim.lr=1e6", "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--set", f"output.logs_dir={tmp_path / 'logs'}", "--set", f"output.best_dir={tmp_path / 'best'}", "--set", "output.run_name=nan",
    ]
    done = run_vaegen(tmp_path, args)
    assert done.returncode == 3, done.stderr[-2000:]
    error = cli_error(done.stderr)
    assert "NaN or infinite at epoch 1" in error and "before anything was saved" in error
    assert not (tmp_path / "logs" / "nan" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "best" / "nan").exists()


def test_a_nan_validation_loss_stops_the_run_and_is_never_the_best(tmp_path, capsys, tiny_config):
    """One step per epoch: the training loss is finite, the weights after that step are not."""
    config = tiny_config(tmp_path, optim={"lr": 10.0}, train={"epochs": 1, "batch_size": 256}, eval={"every": 1})
    assert main(["train", "--config", str(config)]) == 3
    error = capsys.readouterr().err
    assert re.search(r"became (NaN|infinite).* at epoch 1 .*before anything was saved", error), error
    run = tmp_path / "logs" / "tiny"
    assert not (run / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "best" / "tiny").exists()
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip()


def test_a_resumed_run_that_diverges_keeps_its_last_checkpoint_and_best_model(tmp_path, capsys, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 2, "batch_size": 256}, eval={"every": 1})
    assert main(["train", "--config", str(config)]) == 0
    run, best = tmp_path / "logs" / "tiny", tmp_path / "best" / "tiny"
    before = {path: digest(path) for path in [run / "checkpoints" / "last.pt", best / "model.safetensors", best / "metrics.json"]}

    assert main(["train", "--resume", str(run), "--set", "optim.lr=10", "--set", "train.epochs=3"]) == 3
    assert re.search(r"became (NaN|infinite).* at epoch 3 .*Nothing from this epoch was saved", capsys.readouterr().err)
    assert {path: digest(path) for path in before} == before  # the diverged weights replaced nothing
    state = load_training_state(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert all(torch.isfinite(t).all() for t in load_file(str(best / "model.safetensors")).values())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]


def test_a_nan_best_score_saved_by_an_earlier_release_does_not_block_later_exports(tmp_path, tiny_config):
    """Before this release a NaN could be 'best'; every later score compared False with it, so no export happened."""
    config = tiny_config(tmp_path, train={"epochs": 1, "batch_size": 256}, eval={"every": 1})
    assert main(["train", "--config", str(config)]) == 0
    last = tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt"
    state = load_training_state(last)
    state["best_value"] = math.nan
    torch.save(state, last)

    assert main(["train", "--resume", str(tmp_path / "logs" / "tiny"), "--set", "train.epochs=2"]) == 0
    metrics = json.loads((tmp_path / "best" / "tiny" / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and math.isfinite(metrics["value"])
