"""A full disk (ENOSPC) while `vaegen train` saves: one clear paragraph, earlier checkpoints intact, resume works."""

from __future__ import annotations

import errno
import json
import os

import torch
from fault_helpers import CheckpointWriteFault, cli_error
from helpers import metric_rows
from safetensors import SafetensorError

import vaegen
import vaegen.checkpoint
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state


def disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_saving_the_training_state(tmp_path, monkeypatch, capsys, tiny_config):
    # os.write fails with ENOSPC half-way through the epoch-2 save of last.pt, as the kernel reports a full disk
    fault = CheckpointWriteFault(at_save=2, action=disk_full).install(monkeypatch.setattr)
    config = tiny_config(tmp_path, train={"epochs": 3})
    assert main(["train", "--config", str(config)]) == 2
    assert fault.saves == 2
    run = tmp_path / "logs" / "tiny"
    last = run / "checkpoints" / "last.pt"

    message = cli_error(capsys.readouterr().err)
    assert f"could not write {last}" in message and "the disk is full" in message
    assert "No space left on device" in message
    assert "Free space on" in message and "output.logs_dir" in message and "vaegen train --resume" in message
    # the epoch-1 checkpoint is intact and no partial file is left beside it
    assert load_training_state(last)["epoch"] == 1
    assert sorted(path.name for path in last.parent.iterdir()) == ["config.yaml", "last.pt"]

    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", str(run)]) == 0
    assert load_training_state(last)["epoch"] == 3
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2, 3]


def test_disk_full_while_exporting_the_best_model(tmp_path, monkeypatch, capsys, tiny_config):
    # safetensors writes from Rust, out of os.write's reach: its save_file writes half the file and fails
    # with the error it raises on a full file system (this text was observed on a full tmpfs)
    real_save_file = vaegen.checkpoint.save_file
    calls = []

    def save_file_on_a_full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) < 2:
            return real_save_file(tensors, filename, metadata=metadata)
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(os.path.getsize(filename) // 2)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(vaegen.checkpoint, "save_file", save_file_on_a_full_disk)
    config = tiny_config(tmp_path, train={"epochs": 3})
    assert main(["train", "--config", str(config)]) == 2
    assert len(calls) == 2  # epoch 1's export, then epoch 2's (val_nelbo improved)
    best = tmp_path / "best" / "tiny"

    message = cli_error(capsys.readouterr().err)
    assert f"could not write {best / 'model.safetensors'}: the disk is full" in message
    # the epoch-1 model is intact: it loads, and every file in the folder describes it
    model = vaegen.load(best)
    assert model.metadata["epoch"] == 1
    assert json.loads((best / "metrics.json").read_text())["epoch"] == 1
    assert torch.isfinite(model.sample(2, seed=0)).all()
    assert not list(best.glob(".model.safetensors.*.tmp"))
    assert load_training_state(tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt")["epoch"] == 1
