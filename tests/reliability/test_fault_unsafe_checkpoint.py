"""Checkpoint files that carry a pickle payload, or were cut short: refused with the file named, no code run."""

from __future__ import annotations

import pytest
from fault_helpers import cli_error

import vaegen
from vaegen.apps.cli import main
from vaegen.errors import CheckpointError


@pytest.fixture
def trained(tmp_path, tiny_config):
    """A finished one-epoch run: (logs/tiny, best/tiny)."""
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 1}))]) == 0
    return tmp_path / "logs" / "tiny", tmp_path / "best" / "tiny"


def test_resume_from_a_training_state_carrying_a_pickle_payload_is_refused(trained, capsys, pickle_bomb):
    run, _ = trained
    last = pickle_bomb(run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 2
    message = cli_error(capsys.readouterr().err)
    assert f"{last} cannot be loaded safely" in message and "pickled objects, which vaegen never executes" in message
    assert not pickle_bomb.marker.exists()


def test_model_weights_carrying_a_pickle_payload_are_refused(trained, capsys, pickle_bomb):
    _, best = trained
    weights = pickle_bomb(best / "model.safetensors")  # a torch pickle where the safetensors file belongs
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(best), "--set", "backbone=none"]) == 2
    assert f"{weights} is not a readable safetensors file" in cli_error(capsys.readouterr().err)
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        vaegen.load(best)
    assert not pickle_bomb.marker.exists()


@pytest.mark.parametrize("cut", ["inside the header", "inside the tensors"])
def test_truncated_model_weights_name_the_file(trained, capsys, cut):
    _, best = trained
    weights = best / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:100] if cut == "inside the header" else data[: len(data) - 1000])
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(best), "--set", "backbone=none"]) == 2
    message = cli_error(capsys.readouterr().err)
    assert f"{weights} is not a readable safetensors file" in message and "truncated" in message
    with pytest.raises(CheckpointError) as info:
        vaegen.load(best)
    assert str(weights) in str(info.value)


def _empty(path):
    path.write_bytes(b"")


def _a_tensor(path):
    import torch

    torch.save(torch.zeros(3), path)


def _without_epoch(path):
    import torch

    state = torch.load(path, weights_only=True)
    del state["epoch"]
    torch.save(state, path)


@pytest.mark.parametrize(("damage", "message"), [
    (_empty, "cannot be loaded safely"),  # torch's error has no text: the message once failed to build (IndexError)
    (_a_tensor, "is not a vaegen training state (it holds a Tensor)"),  # once AttributeError
    (_without_epoch, "is not a vaegen training state (it holds no epoch)"),  # once KeyError
])
def test_resume_from_a_training_state_that_is_not_one_is_refused(trained, capsys, damage, message):
    run, _ = trained
    last = run / "checkpoints" / "last.pt"
    damage(last)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 2
    error = cli_error(capsys.readouterr().err)
    assert f"{last} " in error and message in error and "start a new run without --resume" in error
