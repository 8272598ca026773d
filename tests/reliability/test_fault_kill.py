"""kill -9 of a real `vaegen train` process, in the middle of a checkpoint write and in the middle of an epoch."""

from __future__ import annotations

import signal

import pytest
import torch
from fault_helpers import run_vaegen
from helpers import RESUME_SEED, checkpoint_weights, metric_rows

import vaegen
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state

STEPS_PER_EPOCH = 240 // 32  # tiny_config: 300 images, 20% validation, full batches of 32


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint_and_resume_finishes(tmp_path, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 3})
    # the epoch-2 save of last.pt writes half of its bytes into its temporary file, then the process is killed
    killed = run_vaegen(tmp_path, ["train", "--config", str(config)], setup="""
        import builtins
        from fault_helpers import CheckpointWriteFault, kill_this_process
        CheckpointWriteFault(at_save=2, action=kill_this_process).install(builtins.setattr)
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run, best = tmp_path / "logs" / "tiny", tmp_path / "best" / "tiny"
    last = run / "checkpoints" / "last.pt"

    # the kill really came mid-write: the temporary file holds part of a checkpoint, and is not one
    (partial,) = last.parent.glob(".last.pt.*.tmp")
    assert 0 < partial.stat().st_size < last.stat().st_size
    with pytest.raises(Exception):
        torch.load(partial, weights_only=True)
    # last.pt is still the complete epoch-1 checkpoint, and the best model still loads
    state = load_training_state(last)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert vaegen.load(best).sample(2, seed=0).shape == (2, 3, 16, 16)

    assert main(["train", "--resume", str(run)]) == 0
    assert load_training_state(last)["epoch"] == 3
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2, 3]  # epoch 2 was logged before the kill: not twice
    assert not list(last.parent.glob(".last.pt.*.tmp"))  # the next save cleared the killed one's leftover


def test_kill_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(tmp_path, tiny_config):
    kill_step = 2 * STEPS_PER_EPOCH + 3  # epoch 3 of 4, step 3
    interrupted = tiny_config(tmp_path / "killed", train={"epochs": 4, "seed": RESUME_SEED}, data={"hflip": True})
    killed = run_vaegen(tmp_path / "killed", ["train", "--config", str(interrupted)], setup=f"""
        from fault_helpers import kill_at_training_step
        kill_at_training_step({kill_step})
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "killed" / "logs" / "tiny"
    assert load_training_state(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2]  # epoch 3 never finished

    assert main(["train", "--resume", str(run)]) == 0
    straight = tiny_config(tmp_path / "straight", train={"epochs": 4, "seed": RESUME_SEED}, data={"hflip": True})
    assert main(["train", "--config", str(straight)]) == 0
    reference = tmp_path / "straight" / "logs" / "tiny"

    resumed, uninterrupted = checkpoint_weights(run), checkpoint_weights(reference)
    assert resumed.keys() == uninterrupted.keys()
    assert max((resumed[k].float() - uninterrupted[k].float()).abs().max().item() for k in resumed) <= 1e-6
    assert load_training_state(run / "checkpoints" / "last.pt")["epoch"] == 4
    assert metric_rows(run) == [pytest.approx(row, rel=1e-5, abs=1e-6) for row in metric_rows(reference)]
    # the best model too: the same epoch, the same weights
    best_resumed = vaegen.load(tmp_path / "killed" / "best" / "tiny").state_dict()
    best_reference = vaegen.load(tmp_path / "straight" / "best" / "tiny").state_dict()
    assert best_resumed["to_mu.weight"].shape == best_reference["to_mu.weight"].shape
    assert max((best_resumed[k].float() - best_reference[k].float()).abs().max().item() for k in best_resumed) <= 1e-6
