"""The Python API: `vaegen.load("best_models/<run>")` gives a ready model.

    model = vaegen.load("best_models/apples")
    images = model.sample(16, seed=0)          # [16, C, H, W] in [0, 1]
    mu, logvar = model.encode(images)
    again = model.reconstruct(images)          # numpy arrays work where tensors do (uint8 in 0-255 too)
    model.classes                               # class names, index = label
    model.latent_density                        # the fitted latent mixture sample() uses, or None (prior)
"""

from __future__ import annotations

import os
import reprlib
import warnings
from pathlib import Path

import torch

from vaegen.checkpoint import load_model_weights, read_model_metadata
from vaegen.config import Config, load_config
from vaegen.density import SAMPLER_FILE, LatentGMM
from vaegen.errors import CheckpointError, VaegenError


def read_model_folder(path: str | Path) -> tuple[Path, Config, dict[str, object]]:
    """The weights file, validated config and weights metadata of a model folder, checked without building the model."""
    folder = Path(path)
    if not folder.exists():
        runs = sorted(weights.parent.name for weights in folder.parent.glob("*/model.safetensors")) if folder.parent.is_dir() else []
        there = f" Model folders in {folder.parent}: {', '.join(runs)}." if runs else ""
        raise CheckpointError(f"{folder} does not exist; pass a model folder that `vaegen train` wrote (best_models/<run>).{there}")
    mix_up = _training_run_given(folder)
    if mix_up:
        raise CheckpointError(mix_up)
    weights = folder / "model.safetensors" if folder.is_dir() else folder
    folder = weights.parent
    if not weights.is_file() or not (folder / "config.yaml").is_file():
        raise CheckpointError(
            f"{folder} is not a vaegen model folder: it needs model.safetensors and config.yaml "
            f"(what `vaegen train` writes to best_models/<run>/)."
        )
    config = load_config(folder / "config.yaml")
    metadata = read_model_metadata(weights)
    if not isinstance(metadata.get("classes"), list):
        raise CheckpointError(f"{weights} has no class list in its metadata; it was not written by vaegen train.")
    return weights, config, metadata


def _training_run_given(path: Path) -> str | None:
    """A training run's log folder (logs/<run>) or its state (checkpoints/last.pt) where a model folder goes:
    the usual mix-up, answered with where that run's model is."""
    run_dir = path.parent.parent if path.suffix == ".pt" else path
    if not (run_dir / "checkpoints" / "last.pt").is_file() or (path / "model.safetensors").is_file():
        return None
    try:
        best = load_config(run_dir / "config.yaml").output.best_dir / run_dir.name
    except VaegenError:
        best = Path("best_models") / run_dir.name
    what = "the training state that `vaegen train --resume` continues from" if path.suffix == ".pt" else "a training run's log folder"
    return f"{path} is {what}, not a model folder; pass the run's best model folder, {best}, which `vaegen train` exported."


def load(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model described by <path>/config.yaml and load <path>/model.safetensors (no code runs).
    `device`: cpu, cuda, cuda:N, mps, or auto (the first of those that is here)."""
    from vaegen.accel import resolve_device
    from vaegen.models import build_model

    if not isinstance(path, (str, os.PathLike)):
        given = "None" if path is None else f"{reprlib.repr(path)} ({type(path).__name__})"
        raise TypeError(
            f"vaegen.load takes the path of a model folder that `vaegen train` wrote (best_models/<run>), "
            f"as a str or pathlib.Path; got {given}."
        )
    device = resolve_device(device, key="device")
    weights, config, metadata = read_model_folder(path)
    classes = metadata["classes"]
    model = build_model(config.model, config.data.image_size, config.data.channels, len(classes))
    load_model_weights(model, weights)
    model.classes = classes
    model.config = config
    model.metadata = metadata
    # `sample()` draws codes from the latent mixture the run fitted (sampler.name: gmm); set it to None for the prior
    sampler_file = weights.parent / SAMPLER_FILE
    model.latent_density = LatentGMM.load(sampler_file) if sampler_file.is_file() else None
    if model.latent_density is None and config.sampler.name == "gmm":  # e.g. a folder copied without it
        warnings.warn(
            f"{sampler_file} is missing although this run samples from a latent mixture (sampler.name: gmm), so "
            f"sample() draws from the prior, not what its FID measured; copy the model folder again, whole.",
            stacklevel=2,
        )
    return model.to(device).eval()
