"""Atomic writes, safe loading (no code execution) and architecture mismatch errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vaegen
from vaegen.checkpoint import (
    BackgroundWriter,
    atomic_write,
    discard,
    host_copy,
    load_model_weights,
    load_training_state,
    read_model_metadata,
    save_model,
    save_training_state,
    write_text_atomic,
    written_together,
)
from vaegen.config import ModelConfig
from vaegen.errors import CheckpointError
from vaegen.models import build_model


def small_model(latent_dim: int = 8, size: int = 16, conditional: str = "none"):
    return build_model(ModelConfig(latent_dim=latent_dim, widths=(8, 16), conditional=conditional), (size, size), 3, 3)


def training_state(epoch: int, **extra) -> dict:
    """The parts every training state holds (load_training_state checks them), with dummy contents."""
    return {"epoch": epoch, "model": {"w": torch.ones(3)}, "optimizer": {}, "rng": {}, "classes": ["a"], **extra}


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path):
    target = tmp_path / "last.pt"
    save_training_state(target, training_state(1))
    before = target.read_bytes()

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == before
    assert load_training_state(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "state.pt"
    save_training_state(target, training_state(1))
    save_training_state(target, training_state(2, big=torch.zeros(1000)))
    state = load_training_state(target)
    assert state["epoch"] == 2 and state["big"].shape == (1000,)


def test_pickle_payload_is_refused_and_never_runs(tmp_path, pickle_bomb):
    path = pickle_bomb(tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="pickled objects"):
        load_training_state(path)
    assert not pickle_bomb.marker.exists()


def test_truncated_safetensors_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, small_model(), {"classes": ["a", "b", "c"]})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        load_model_weights(small_model(), path)


def test_weights_from_other_model_name_the_mismatch(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, small_model(latent_dim=8), {})
    with pytest.raises(CheckpointError) as info:
        load_model_weights(small_model(latent_dim=16), path)
    message = str(info.value)
    assert "different model" in message
    assert "to_mu.weight is (8, 256) in the checkpoint but (16, 256) in the model" in message
    assert "config.yaml" in message


def test_conditional_checkpoint_into_unconditional_model(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, small_model(conditional="embedding"), {})
    with pytest.raises(CheckpointError, match=r"1 unexpected parameter\(s\) \(e\.g\. label_embedding\.weight\)"):
        load_model_weights(small_model(), path)


def test_round_trip_keeps_every_tensor(tmp_path):
    model = small_model()
    path = tmp_path / "model.safetensors"
    save_model(path, model, {"epoch": 3})
    other = small_model()
    load_model_weights(other, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_load_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a vaegen model folder"):
        vaegen.load(tmp_path)


def test_missing_training_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        load_training_state(tmp_path / "nope.pt")


def test_safetensors_from_another_tool_is_a_checkpoint_error(tmp_path):
    # torch/transformers write plain strings such as {"format": "pt"}, which are not JSON
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="safetensors file but not a vaegen model"):
        read_model_metadata(path)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644


def test_background_writer_runs_writes_in_order_and_raises_a_failed_write_in_the_caller():
    written = []
    writer = BackgroundWriter()
    for number in range(3):
        writer.submit(lambda number=number: written.append(number))
    writer.wait()
    assert written == [0, 1, 2]

    def full_disk():
        raise OSError(28, "No space left on device")

    writer.submit(full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.submit(lambda: written.append("after"))  # the next write refuses to start after a failed one
    assert written == [0, 1, 2]
    writer.wait()  # the error was handed over once

    # where another error is already stopping the run, join hands the write's error back instead of raising it
    writer.submit(full_disk)
    assert isinstance(writer.join(), OSError)
    assert writer.join() is None


def test_host_copy_is_a_snapshot_the_live_tensors_cannot_change():
    weight = torch.ones(3)
    state = {"model": {"w": weight}, "optimizer": {"state": {0: {"exp_avg": weight * 2}}, "param_groups": [{"betas": (0.9, 0.99)}]}, "epoch": 4}
    snapshot = host_copy(state)
    weight.add_(1)
    state["optimizer"]["state"][0]["exp_avg"].zero_()
    assert torch.equal(snapshot["model"]["w"], torch.ones(3)) and torch.equal(snapshot["optimizer"]["state"][0]["exp_avg"], torch.full((3,), 2.0))
    assert snapshot["optimizer"]["param_groups"] == [{"betas": (0.9, 0.99)}] and snapshot["epoch"] == 4


def test_files_written_together_land_together_or_not_at_all(tmp_path):
    import threading

    for name in "abc":
        (tmp_path / name).write_text(f"old {name}")
    with pytest.raises(KeyboardInterrupt), written_together():
        write_text_atomic(tmp_path / "a", "new a")
        discard(tmp_path / "c")
        assert (tmp_path / "a").read_text() == "old a" and (tmp_path / "c").exists()  # nothing lands before the end
        raise KeyboardInterrupt
    assert [(tmp_path / name).read_text() for name in "abc"] == ["old a", "old b", "old c"]
    assert not list(tmp_path.glob(".*.tmp"))

    with written_together():
        write_text_atomic(tmp_path / "a", "new a")
        discard(tmp_path / "c")
        # another thread's writes (the background checkpoint writer's) are not held back by this block
        other = threading.Thread(target=write_text_atomic, args=(tmp_path / "b", "new b"))
        other.start()
        other.join()
        assert (tmp_path / "b").read_text() == "new b" and (tmp_path / "a").read_text() == "old a"
    assert (tmp_path / "a").read_text() == "new a" and not (tmp_path / "c").exists()
    assert not list(tmp_path.glob(".*.tmp"))
