"""A sweep whose trials hit NaN and run out of memory: each is recorded failed, and the sweep goes on."""

from __future__ import annotations

import sys

import pytest
import yaml
from helpers import read_summary

from vaegen.apps.cli import main

pytest.importorskip("ray.tune", reason="vaegen tune needs ray[tune] (pip install 'vaegen[tune]')")
pytest.importorskip("optuna", reason="vaegen tune needs optuna (pip install 'vaegen[tune]')")

# A latent size whose first layer (to_mu: 10**12 x 256 float32 = 1 PB) is larger than any 64-bit address space:
# the CPU allocator refuses it at once, whatever the machine's memory or overcommit policy, and touches no RAM.
OUT_OF_MEMORY = 10**12


@pytest.mark.skipif(sys.maxsize < 2**62, reason="needs a 64-bit Python (the refused allocation must be representable)")
def test_nan_and_out_of_memory_trials_are_recorded_failed_and_the_sweep_continues(tmp_path, capsys, tiny_sweep):
    config = tiny_sweep(
        tmp_path,
        {"optim.lr": {"choice": [1e-3, 1e6]}, "model.latent_dim": {"choice": [8, OUT_OF_MEMORY]}},
        points_to_evaluate=[
            {"optim.lr": 1e6, "model.latent_dim": 8},  # diverges at once: the loss is NaN/inf in epoch 1
            {"optim.lr": 1e-3, "model.latent_dim": OUT_OF_MEMORY},  # the model cannot be allocated
            {"optim.lr": 1e-3, "model.latent_dim": 8},  # a healthy trial, after both failures
        ],
        scheduler="fifo",
        max_concurrent=1,  # in this order, so the healthy trial starts after both failures
    )
    sweep = yaml.safe_load(config.read_text())
    sweep["overrides"] = {"eval.backbone": "none", "output.select": "val_nelbo"}  # no FID: seconds per trial
    config.write_text(yaml.safe_dump(sweep))

    assert main(["tune", "--config", str(config)]) == 0
    out = capsys.readouterr().out

    rows = read_summary(tmp_path)
    assert len(rows) == 3
    by_params = {(float(row["optim.lr"]), int(row["model.latent_dim"])): row for row in rows}
    diverged, out_of_memory, healthy = by_params[(1e6, 8)], by_params[(1e-3, OUT_OF_MEMORY)], by_params[(1e-3, 8)]

    assert diverged["status"] == "failed"
    assert "the loss became NaN or infinite at epoch 1" in diverged["error"]
    assert out_of_memory["status"] == "failed"
    assert "can't allocate memory" in out_of_memory["error"] or "out of memory" in out_of_memory["error"].lower()
    assert diverged["best_val_nelbo"] == out_of_memory["best_val_nelbo"] == ""

    assert healthy["status"] == "finished" and healthy["error"] == ""
    assert 0 < float(healthy["best_val_nelbo"]) < 1000
    assert out.count("failed") >= 2
    # the sweep's best model is the healthy trial's
    best = tmp_path / "best" / "tiny-best"
    assert yaml.safe_load((best / "config.yaml").read_text())["model"]["latent_dim"] == 8
    assert (best / "model.safetensors").is_file()


def test_training_that_runs_out_of_memory_says_what_to_lower(tmp_path, capsys, tiny_config):
    # 10**12 latent dimensions ask the allocator for about a petabyte: refused at once, no RAM used
    config = tiny_config(tmp_path, model={"latent_dim": 10**12})
    assert main(["train", "--config", str(config)]) == 4
    err = capsys.readouterr().err
    assert "training ran out of host memory" in err and "Lower train.batch_size" in err
    assert "Traceback" not in err
