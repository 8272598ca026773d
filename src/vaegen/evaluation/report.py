"""`vaegen test`: score a trained model and draw what people look at.

Loads `best_models/<run>` (safetensors, no code runs), reads the data it was trained on, and
writes to one folder: samples.png (one labelled block per class for conditional models), reconstructions.png,
interpolation.png (each enlarged by a whole factor when the model's images are small: plots.view_scale) and
metrics.json (FID/KID with their protocol; the validation loss terms as training computes them).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from vaegen.checkpoint import make_output_folder, write_text_atomic
from vaegen.config import SamplerConfig, TestConfig, network_of
from vaegen.data.dataset import TEST_SETTINGS, default_cache_dir, load_splits, to_input
from vaegen.errors import ConfigError, DataError
from vaegen.evaluation.backbones import inception_weights, inception_weights_path
from vaegen.evaluation.class_fidelity import conditional_fidelity, label_agreement, load_or_train_classifier
from vaegen.evaluation.frechet import build_evaluator, eval_batch_size, score_model
from vaegen.evaluation.validation import validation_terms
from vaegen.models import family_of, reconstructs
from vaegen.pipeline import load
from vaegen.plots import class_blocks, for_viewing, image_grid, reconstruction_grid, samples_per_class, save_png
from vaegen.samplers.draw import generated_samples, per_class_samples, slerp
from vaegen.samplers.mixture import fit_model_density
from vaegen.training.accel import resolve_device


@dataclass(frozen=True)
class TestReport:
    __test__ = False  # not a pytest test class, despite the name

    output_dir: Path
    metrics: dict
    files: list[Path]


def run_test(cfg: TestConfig) -> TestReport:
    if cfg.checkpoint is None:
        raise ConfigError("vaegen test needs a checkpoint: --checkpoint best_models/<run>, or `checkpoint:` in the test config.")
    device = resolve_device(cfg.device, key="device")
    model = load(cfg.checkpoint, device)
    train_cfg = model.config
    overrides = {"root": cfg.data_root, "cache_dir": cfg.cache_dir, "skip_bad": cfg.skip_bad}
    data_cfg = train_cfg.data.model_copy(update={key: value for key, value in overrides.items() if value is not None})
    splits = load_splits(data_cfg, train_cfg.train.seed, TEST_SETTINGS)
    if splits.train.classes != model.classes:
        raise ConfigError(
            f"the model was trained on classes {model.classes} but {data_cfg.root} has {splits.train.classes}; "
            f"pass the data it was trained on with data_root (or --set data_root=...)."
        )
    weights = _inception_weights(cfg)
    family = family_of(train_cfg.model)
    if cfg.sampler == "prior" and not family.has_prior:
        raise ConfigError(
            f"sampler is prior, but {train_cfg.model.name} is an {family.name} model with no prior to sample from; leave "
            f"sampler at auto (its latent mixture) or set --set sampler=gmm."
        )
    if cfg.sampler == "prior":
        model.latent_density = None
    elif (cfg.sampler == "gmm" or not family.has_prior) and model.latent_density is None:
        sampler_cfg = train_cfg.sampler if train_cfg.sampler.name == "gmm" else SamplerConfig(name="gmm")
        model.latent_density = fit_model_density(
            model, splits.train, sampler_cfg, train_cfg.train.seed, eval_batch_size(cfg.batch_size, device), device
        )
    folder = Path(cfg.checkpoint) if Path(cfg.checkpoint).is_dir() else Path(cfg.checkpoint).parent  # or its weights file
    out = Path(cfg.output_dir) if cfg.output_dir else folder / "test"
    make_output_folder(out, "output_dir")
    split = splits.select(cfg.split)
    if len(split.images) == 0:
        other = "train" if cfg.split == "val" else "all"
        raise DataError(
            f"the {cfg.split} split of {data_cfg.root} has no images (data.val_fraction {data_cfg.val_fraction} of "
            f"{len(splits.train.images) + len(splits.val.images)}), so there is nothing to reconstruct or score; "
            f"test on another split (--set split={other}) or on a folder with more images."
        )
    files = [_samples(model, cfg, out / "samples.png")]
    if reconstructs(model):  # a latent family's: reconstructions and interpolations between codes
        files += _reconstructions(model, split, cfg, device, out)

    metrics = {"checkpoint": str(cfg.checkpoint), "split": cfg.split, "num_images": len(split.images),
               "sampler": "prior" if getattr(model, "latent_density", None) is None else "gmm"}
    metrics.update(_likelihood_terms(model, split, train_cfg))
    if cfg.backbone != "none":
        metrics.update(_distances(model, splits, data_cfg, train_cfg.train.seed, cfg, weights, device))
    if model.is_conditional and model.num_classes > 1:
        classifier = load_or_train_classifier(splits.train, model.num_classes, data_cfg.cache_dir or default_cache_dir(), device, train_cfg.train.seed)
        metrics.update(conditional_fidelity(classifier, model, model.classes, 100, cfg.seed, cfg.temperature, model.latent_density))
        metrics[f"classifier_{cfg.split}_accuracy"] = label_agreement(classifier, split.images, split.labels)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    files.append(out / "metrics.json")
    return TestReport(out, metrics, files)


def _save(picture, path: Path) -> Path:
    save_png(picture, path)
    return path


def _reconstructions(model, split, cfg: TestConfig, device, out: Path) -> list[Path]:
    """reconstructions.png (up to 32 images above their reconstructions) and interpolation.png."""
    x = to_input(split.images[:32], device)
    y = split.labels[:32].to(device) if model.is_conditional else None
    files = [_save(for_viewing(reconstruction_grid(x, model.reconstruct(x, y)), x), out / "reconstructions.png")]
    if len(split.images) >= 2:
        files.append(_interpolation(model, split, cfg, device, out / "interpolation.png"))
    else:
        warnings.warn(f"no interpolation.png: the {cfg.split} split has one image, and an interpolation runs between two.", stacklevel=3)
    return files


def _samples(model, cfg: TestConfig, path: Path) -> Path:
    """A grid × grid grid of samples; conditional models: one labelled block per class, samples_per_class(grid²)
    in each, wrapping after BLOCK_COLUMNS (from the prior every block decodes the same codes, so the blocks
    differ only by the class; a fitted mixture draws each class's codes from its own components). A family
    without a decoder draws with its own generate."""
    if not reconstructs(model):
        images = generated_samples(model, cfg.grid * cfg.grid, cfg.seed, cfg.temperature)
        return _save(class_blocks(images, model.classes) if model.is_conditional else for_viewing(image_grid(images, nrow=cfg.grid), images), path)
    if model.is_conditional:
        per_class = samples_per_class(cfg.grid * cfg.grid, model.num_classes)
        images = per_class_samples(model, per_class, cfg.seed, cfg.temperature, getattr(model, "latent_density", None))
        return _save(class_blocks(images, model.classes), path)
    images = model.sample(cfg.grid * cfg.grid, temperature=cfg.temperature, seed=cfg.seed)
    return _save(for_viewing(image_grid(images, nrow=cfg.grid), images), path)


@torch.no_grad()
def _interpolation(model, split, cfg: TestConfig, device, path: Path) -> Path:
    """Rows from one validation image to another: the original, decoded steps between their codes, the other original."""
    rows = min(cfg.interpolation.rows, len(split.images) // 2)
    generator = torch.Generator().manual_seed(cfg.seed)
    picks = torch.randperm(len(split.images), generator=generator)[: 2 * rows]
    x = to_input(split.images[picks], device)
    y = split.labels[picks].to(device) if model.is_conditional else None
    mu, _ = model.encode(x, y)
    weights = torch.linspace(0, 1, cfg.interpolation.steps, device=device)
    images = []
    for r in range(rows):
        a, b = 2 * r, 2 * r + 1
        z = slerp(mu[a], mu[b], weights)
        labels = None
        if y is not None:  # the class switches half-way: conditional codes live per class
            labels = torch.where(weights < 0.5, y[a], y[b])
        images += [x[a : a + 1], model.decode(z, labels), x[b : b + 1]]
    images = torch.cat(images)
    return _save(for_viewing(image_grid(images, nrow=cfg.interpolation.steps + 2), images), path)


def _likelihood_terms(model, split, train_cfg) -> dict:
    """The family's validation terms exactly as training computes them at β = 1 (the same fixed noise, so a VAE's
    `nelbo` here is the run's `val_nelbo` on the same split), the objective left out; `recon_kind` names the loss."""
    terms = validation_terms(model, family_of(train_cfg.model), split, train_cfg, 1.0, next(model.parameters()).device)
    named = {key.removeprefix("val_"): value for key, value in terms.items() if key != "val_loss"}
    if "recon" not in named:
        return named
    return {"recon": named.pop("recon"), "recon_kind": train_cfg.loss.recon, **named}


def _inception_weights(cfg: TestConfig) -> Path | None:
    """The Inception weights file the test scores with, found (or downloaded) before anything is drawn, so that a
    missing one is reported in this config's keys (inception_weights, backbone) and not a training config's."""
    if "inception" in {network_of(name) for name in (cfg.backbone, *cfg.extra_backbones)}:
        return inception_weights(cfg.inception_weights, prefix="")
    if cfg.backbone == "auto":  # a wrong path is an error; no weights found picks efficientnet-lite0
        return inception_weights_path(cfg.inception_weights, prefix="")
    return None


def _distances(model, splits, data_cfg, seed: int, cfg: TestConfig, weights: Path | None, device) -> dict:
    settings = cfg.model_copy(update={"inception_weights": weights})  # the weights file found before anything was drawn
    evaluator = build_evaluator(settings, cfg.split, data_cfg, splits, seed, device, reference_key="split")
    class_weights = torch.bincount(splits.train.labels, minlength=model.num_classes).float()
    return score_model(evaluator, model, cfg.temperature, class_weights, model.latent_density, family_of(model.config.model).has_prior)
