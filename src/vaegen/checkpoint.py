"""Writing and reading checkpoints without ever losing one or running code from one.

- Every write goes to a temporary file in the target folder, is fsynced, then renamed
  over the target: a kill at any moment leaves either the old file or the new one.
- Model weights are safetensors (no code inside, by construction). The training state
  (optimizer, RNG states, epoch) is a `torch.save` of plain tensors and numbers, read back
  with `weights_only=True`, which refuses pickled objects.
- Loading weights into a model compares names and shapes first and reports the mismatch
  in words instead of a wall of missing keys.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from vaegen.errors import CheckpointError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) and rename tmp over path only once it is complete and on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_training_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}; start a new run without --resume.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} cannot be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0]}). It is either "
            f"damaged or holds pickled objects, which vaegen never executes. Resume from another run, or start "
            f"a new run without --resume."
        ) from exc


def save_model(path: Path, model: nn.Module, metadata: dict[str, object]) -> None:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    meta = {key: json.dumps(value) for key, value in metadata.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_model_metadata(path: Path) -> dict[str, object]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(_unreadable(path, exc)) from exc
    return {key: json.loads(value) for key, value in raw.items()}


def load_model_weights(model: nn.Module, path: Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model weights at {path}.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(_unreadable(path, exc)) from exc
    load_state_checked(model, tensors, str(path))


def load_state_checked(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict, after checking that `tensors` were made by a model of the same shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{name} is {tuple(tensors[name].shape)} in the checkpoint but {tuple(expected[name].shape)} in the model"
        for name in expected
        if name in tensors and tensors[name].shape != expected[name].shape
    ]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            details.append("shape mismatch: " + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
        if missing:
            details.append(f"{len(missing)} parameter(s) missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected parameter(s) (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"{source} was saved by a different model than the config describes: {'; '.join(details)}. "
            f"Use the config the checkpoint was trained with (its config.yaml), or train a new model."
        )
    model.load_state_dict(tensors)


def _unreadable(path: Path, exc: Exception) -> str:
    return (
        f"{path} is not a readable safetensors file ({exc}); it may be truncated or not a vaegen checkpoint. "
        f"Retrain, or restore the file from a copy."
    )
