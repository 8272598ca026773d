"""The Python API: `vaegen.load("best_models/<run>")` (or a Hugging Face Hub id, "owner/name") gives a `Pipeline`, a trained model with what it was trained
with: its class names, its config and the sampler its samples come from.

    model = vaegen.load("best_models/apples")
    images = model.sample(16, seed=0)          # [16, C, H, W] in [0, 1]
    mu, logvar = model.encode(images)
    again = model.reconstruct(images)          # numpy arrays work where tensors do (uint8 in 0-255 too)
    model.classes                              # class names, index = label
    model.sampler                              # the fitted latent mixture sample() uses, or None (the prior)
    model.model                                # the torch module itself
"""

from __future__ import annotations

import math
import os
import reprlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaegen.checkpoint import load_model_weights, read_model_metadata
from vaegen.config import Config, config_from_dict, load_config
from vaegen.errors import CheckpointError, ConfigError, VaegenError
from vaegen.models import build_model, family_of
from vaegen.samplers.mixture import SAMPLER_FILE, LatentGMM, latent_codes
from vaegen.sharing import hub_repo_id, hub_snapshot
from vaegen.training.accel import resolve_device


def read_model_folder(path: str | Path) -> tuple[Path, Config, dict[str, object]]:
    """The weights file, validated config and weights metadata of a model folder (or of a Hugging Face Hub repo id,
    vaegen.sharing), checked without building the model."""
    folder = Path(path)
    repo_id = None if folder.exists() else hub_repo_id(str(path))
    if repo_id is not None:
        folder = hub_snapshot(repo_id)
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


def load(path: str | Path, device: str | torch.device = "cpu", sampling: dict | None = None) -> Pipeline:
    """The model in <path> (config.yaml and model.safetensors; no code runs), with its classes, config and sampler.
    `device`: cpu, cuda, cuda:N, mps, or auto (the first of those that is here). `sampling`: model.* keys to change
    that change only how the model samples (its family's sampling_keys), e.g. {"sample_steps": 250}."""
    if not isinstance(path, (str, os.PathLike)):
        given = "None" if path is None else f"{reprlib.repr(path)} ({type(path).__name__})"
        raise TypeError(
            f"vaegen.load takes the path of a model folder that `vaegen train` wrote (best_models/<run>), "
            f"as a str or pathlib.Path; got {given}."
        )
    device = resolve_device(device, key="device")
    weights, config, metadata = read_model_folder(path)
    if sampling:
        config = with_sampling_settings(config, sampling)
    classes = metadata["classes"]
    model = build_model(config.model, config.data.image_size, config.data.channels, len(classes))
    load_model_weights(model, weights)
    sampler_file = weights.parent / SAMPLER_FILE
    sampler = LatentGMM.load(sampler_file) if sampler_file.is_file() else None
    if sampler is None and config.sampler.name == "gmm":  # e.g. a folder copied without it
        warnings.warn(
            f"{sampler_file} is missing although this run samples from a latent mixture (sampler.name: gmm), so "
            f"sample() draws from the prior, not what its FID measured; copy the model folder again, whole.",
            stacklevel=2,
        )
    return Pipeline(model.to(device).eval(), config, classes, metadata, sampler, family_of(config.model).has_prior)


def with_sampling_settings(config: Config, settings: dict) -> Config:
    """`config` with the model.* keys in `settings` changed, each one that changes only how the family samples
    (Family.sampling_keys), checked as training checks a config; any other key is refused (ConfigError)."""
    family = family_of(config.model)
    fixed = [key for key in settings if key not in family.sampling_keys]
    if fixed:
        free = ", ".join(f"model.{key}" for key in family.sampling_keys)
        allowed = f"only {free} can" if free else "none of its model.* keys can"
        raise ConfigError(
            f"model.{fixed[0]} is not a sampling setting of a {config.model.name} model: its weights were trained with "
            f"it (or it is no key at all), and {allowed} change after training; remove model.{fixed[0]} from the "
            f"settings given for sampling."
        )
    raw = config.model_dump(mode="json")
    raw["model"].update(settings)
    changed = config_from_dict(raw, "the model.* settings given for sampling")
    family.check(changed)
    return changed


@dataclass(eq=False)
class Pipeline:
    """A trained model and what it was trained with. `sample`, and a latent family's `encode`, `decode` and
    `reconstruct`, take class names where the module takes indices; everything else (parameters(), latent_dim, ...)
    is the module's."""

    model: torch.nn.Module
    config: Config
    classes: list[str]
    metadata: dict[str, object]
    sampler: LatentGMM | None = None  # set it to None to sample from the prior
    has_prior: bool = True

    def __repr__(self) -> str:
        drawn_from = "the prior" if self.sampler is None else "a latent mixture"
        return f"Pipeline({self.config.model.name}, {len(self.classes)} classes, samples from {drawn_from})"

    def __getattr__(self, name: str):
        if name == "model":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        if name in ("encode", "decode", "decode_logits", "reconstruct") and not hasattr(self.model, name):
            raise AttributeError(f"a {self.config.model.name} model has no {name}(): it has no latent codes to encode or "
                                 f"decode (a latent family's, a VAE's or an autoencoder's, have); draw its images with sample()")
        found = getattr(self.model, name)
        if name in ("encode", "reconstruct"):  # only where the module has them: a latent family's
            return lambda x, labels=None: found(self._in_unit_range(self._check_images(x)), self.class_indices(labels))
        if name in ("decode", "decode_logits"):
            return lambda z, labels=None: found(self._check_codes(z), self.class_indices(labels))
        return found

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @property
    def _weights(self) -> torch.Tensor:
        return next(self.model.parameters())

    def _check_codes(self, z) -> torch.Tensor:
        z = self._as_tensor(z, "latent codes")
        if z.dim() != 2 or z.shape[1] != self.model.latent_dim:
            raise ValueError(f"this model decodes latent codes of shape [N, {self.model.latent_dim}]; got {list(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"this model decodes float latent codes; got a {z.dtype} tensor; convert it with z.float()")
        return z.to(self._weights.dtype)

    def _as_tensor(self, x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
        """A numpy array as a tensor on this model's device, sharing its memory on the CPU; tensors pass through."""
        if isinstance(x, np.ndarray):
            if any(stride < 0 for stride in x.strides):  # x[..., ::-1] (BGR to RGB): torch has no negative strides
                x = x.copy()
            return torch.as_tensor(x, device=self._weights.device)
        if not torch.is_tensor(x):
            raise TypeError(f"this model takes {what} as a torch tensor or a numpy array; got {type(x).__name__}")
        return x

    def _check_images(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """`x` as a batch [N, C, H, W] of this model's size, or an error that says how to make it one."""
        x = self._as_tensor(x, "images")
        height, width = self.model.image_size
        if x.dim() == 4 and tuple(x.shape[1:]) == (self.model.channels, height, width):
            return x
        if x.dim() == 3:
            fix = "one image without its batch dimension: add one (x[None] or x.unsqueeze(0))"
            if tuple(x.shape) != (self.model.channels, height, width):
                fix += f", and give it {self.model.channels} channel(s) at {height}x{width}"
        elif x.dim() == 4 and tuple(x.shape[1:]) == (height, width, self.model.channels):
            fix = "channels last; move them to dimension 1 (x.permute(0, 3, 1, 2))"
        elif x.dim() == 4 and tuple(x.shape[2:]) == (height, width):
            fix = f"convert them to {self.model.channels} channel(s), as the training images were (data.channels: {self.model.channels})"
        elif x.dim() == 4:
            fix = f"resize them to {height}x{width} first"
        else:
            fix = "pass a batch of images, 4 dimensions"
        shape = f"[N, {self.model.channels}, {height}, {width}]"
        raise ValueError(f"this model takes images of shape {shape} in [0, 1]; got {list(x.shape)}; {fix}")

    def _in_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (0-255) divided by 255; float images checked to lie in [0, 1], with slack for float noise
        and augmentations. Reads the images' extremes on the host, so the training step (forward) skips it."""
        if x.dtype == torch.uint8:
            return x.to(self._weights.dtype) / 255
        if not x.is_floating_point():
            raise ValueError(
                f"this model takes float images in [0, 1] (or uint8 images in 0-255); got a {x.dtype} tensor; "
                f"convert it with x.float(), divided by 255 if it holds 0-255 pixel values"
            )
        # numpy's default float64 (or a float16 batch) meets the weights' dtype here, not in a convolution's error
        x = x.to(self._weights.dtype)
        if not x.numel():
            return x
        low, high = (value.item() for value in torch.aminmax(x.detach()))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(
                "these images hold NaN or infinite values; this model takes images with values in [0, 1]: "
                "check how they were made (torch.nan_to_num replaces such values)"
            )
        if high > 1.5 or low < -0.5:
            if low >= -0.5 and high <= 255.5:
                fix = "they look like 0-255 pixel values: divide uint8 images by 255 (x / 255), or pass the uint8 tensor itself"
            elif low >= -1.5 and high <= 1.5:
                fix = "they look normalized to [-1, 1]: map them back with (x + 1) / 2"
            else:
                fix = "scale them to [0, 1] (divide uint8 images by 255)"
            found = f"these range from {low:.4g} to {high:.4g}"
            raise ValueError(f"this model takes images with values in [0, 1]; {found}; {fix}")
        return x

    @property
    def latent_density(self) -> LatentGMM | None:
        """The sampler's old name."""
        return self.sampler

    @latent_density.setter
    def latent_density(self, sampler: LatentGMM | None) -> None:
        self.sampler = sampler

    def to(self, device: str | torch.device) -> Pipeline:
        self.model.to(device)
        return self

    def eval(self) -> Pipeline:
        self.model.eval()
        return self

    @torch.no_grad()
    def sample(self, n: int, labels=None, temperature: float = 1.0, seed: int | None = None) -> torch.Tensor:
        """`n` images in [0, 1]; same seed, same images. Codes come from `sampler` (the fitted latent mixture) when there
        is one, else from the prior, z ~ N(0, T² I). `labels` (conditional models only): one class for every image
        (n = 0 included) or one per image, as indices or names."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n is the number of images to draw, a whole number >= 0; got {n!r}")
        if not (math.isfinite(temperature) and temperature >= 0):  # 0: every code at its mean
            raise ValueError(f"temperature scales the spread of the latent codes and must be a number >= 0; got {temperature!r}")
        if labels is not None and not self.model.is_conditional:
            raise ValueError(f"this model is not conditional, so it takes no labels (got labels={labels!r}); leave labels out")
        if self.sampler is None and not self.has_prior:
            raise ValueError(
                f"a {self.config.model.name} model has no prior to sample from: its samples come from the latent mixture "
                f"fitted on the training images' codes (sampler.safetensors beside the model); copy the model folder "
                f"again, whole, or decode codes of your own"
            )
        generator = torch.Generator(device="cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        if self.model.is_conditional:  # one label per image
            labels = self.model._check_labels(self.class_indices(labels), n)
        if self.sampler is None:  # the family's own draws: its prior (a VAE's N(0, T² I), a hierarchy's levels, ...)
            given = {} if labels is None else {"labels": labels}  # conditional ones draw the classes asked for
            return self.model.generate(n, generator, temperature, **given)
        device = next(self.model.parameters()).device
        codes = latent_codes(n, self.model.latent_dim, generator, labels, temperature, self.sampler.to(device))
        return self.model.decode(codes.to(device), labels)

    def class_indices(self, labels) -> torch.Tensor | None:
        """Class names or indices as a flat long tensor on the model's device (the module checks count and range).
        Yes/no values and floats are refused: torch would read True and 1.0 (and 1.7) as class 1 without a word."""
        if labels is None:
            return None
        names = [labels] if isinstance(labels, str) else labels
        indices = labels
        if isinstance(names, (list, tuple)) and names and all(isinstance(name, str) for name in names):
            unknown = [name for name in names if name not in self.classes]
            if unknown:
                raise ValueError(f"{', '.join(map(repr, unknown))} is not a class of this model ({', '.join(self.classes)})")
            indices = [self.classes.index(name) for name in names]
        try:
            tensor = torch.as_tensor(indices, device=next(self.model.parameters()).device)
        except (TypeError, ValueError, RuntimeError):  # names mixed with indices, or no number at all
            raise self._not_labels(labels, "which is neither; pass all indices or all names") from None
        listed = isinstance(indices, (list, tuple))
        if torch.is_tensor(indices) or isinstance(indices, np.ndarray):
            many, plural = ("a tensor of" if torch.is_tensor(indices) else "an array of"), "s"
        else:
            many, plural = ("which holds", "s") if listed else ("a", "")
        if tensor.dtype == torch.bool or (listed and any(isinstance(item, bool) for item in indices)):  # [True, 0] reads as [1, 0]
            raise self._not_labels(labels, f"{many} yes/no value{plural}; pass the class's index or name")
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel():  # [] reads as a float tensor
            raise self._not_labels(labels, f"{many} float{plural}; pass whole numbers, e.g. 1 (labels.long() converts a float tensor)")
        return tensor.long().reshape(-1)

    def _not_labels(self, labels, why: str) -> ValueError:
        return ValueError(
            f"labels are class indices (whole numbers from 0 to {len(self.classes) - 1}) or class names "
            f"({', '.join(self.classes)}); got {labels!r}, {why}"
        )
