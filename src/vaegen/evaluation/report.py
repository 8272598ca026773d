"""`vaegen test`: score a trained model (`best_models/<run>`) on the data it was trained on, and write
samples.png, reconstructions.png, interpolation.png and metrics.json (FID/KID, precision/recall/density/coverage
and the Inception Score with their protocol, reconstruction SSIM/PSNR, the validation terms as training
computes them, the IWAE-bound and ELBO negative log-likelihood of families with a likelihood bound, the exact NLL of
the dequantized images for families with an exact density) to one folder;
latent families also get the latent diagnostics (vaegen.evaluation.latents): kl_per_dim.png, traversals.png,
latent_map.png and their counts in metrics.json. metrics.json's sample_seconds_per_image is the wall time per image
of drawing samples.png; the test config's model.* settings change how a model samples (its family's sampling keys, a
diffusion model's step count) without retraining.
"""

from __future__ import annotations

import json
import time
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
from vaegen.evaluation.likelihood import exact_likelihood_metrics, likelihood_metrics
from vaegen.evaluation.latents import latent_pictures
from vaegen.evaluation.reconstruction import reconstruction_quality
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
    # the pipeline (internal calls take its module, past the user-input checks), with the test's sampling settings
    model = load(cfg.checkpoint, device, sampling=cfg.model)
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
    if cfg.sampler == "gmm" and not reconstructs(model):
        raise ConfigError(
            f"sampler is gmm, but a {train_cfg.model.name} model has no encoder, so no latent codes for a mixture to fit; "
            f"leave sampler at auto (its own draws) or set --set sampler=prior."
        )
    if cfg.sampler == "prior":
        model.sampler = None
    elif (cfg.sampler == "gmm" or not family.has_prior) and model.sampler is None:
        sampler_cfg = train_cfg.sampler if train_cfg.sampler.name == "gmm" else SamplerConfig(name="gmm")
        model.sampler = fit_model_density(
            model.model, splits.train, sampler_cfg, train_cfg.train.seed, eval_batch_size(cfg.batch_size, device), device
        )
    checkpoint = Path(cfg.checkpoint)
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent  # a model folder, or its weights file
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
    samples, seconds_per_image = _samples(model, cfg, out / "samples.png")
    files = [samples]
    if reconstructs(model):  # a latent family's: reconstructions and interpolations between codes
        files += _reconstructions(model, split, cfg, device, out)
    metrics = {"checkpoint": str(cfg.checkpoint), "split": cfg.split, "num_images": len(split.images),
               "sampler": "prior" if model.sampler is None else "gmm", "sample_seconds_per_image": seconds_per_image,
               **({"model": dict(cfg.model)} if cfg.model else {})}
    metrics.update(_likelihood_terms(model.model, split, train_cfg))
    metrics.update(likelihood_metrics(model.model, family, split, splits.train, train_cfg.loss, cfg, device))
    metrics.update(exact_likelihood_metrics(model.model, family, split, cfg, device))
    if reconstructs(model):
        metrics.update(reconstruction_quality(model.model, split, eval_batch_size(cfg.batch_size, device), device))
    if reconstructs(model) and cfg.diagnostics.enabled:
        stats, pictures = latent_pictures(model.model, split, cfg.diagnostics, cfg.seed, eval_batch_size(cfg.batch_size, device))
        files += [_save(picture, out / name) for name, picture in pictures.items()]
        metrics.update(stats.metrics())
    if cfg.backbone != "none":
        evaluator = build_evaluator(cfg.model_copy(update={"inception_weights": weights}), cfg.split, data_cfg, splits,
                                    train_cfg.train.seed, device, reference_key="split")
        class_weights = torch.bincount(splits.train.labels, minlength=model.num_classes).float()
        metrics |= score_model(evaluator, model.model, cfg.temperature, class_weights, model.sampler, family.has_prior)
    if model.is_conditional and model.num_classes > 1:
        classifier = load_or_train_classifier(splits.train, model.num_classes, data_cfg.cache_dir or default_cache_dir(), device, train_cfg.train.seed)
        metrics.update(conditional_fidelity(classifier, model.model, model.classes, 100, cfg.seed, cfg.temperature, model.sampler))
        metrics[f"classifier_{cfg.split}_accuracy"] = label_agreement(classifier, split.images, split.labels)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    files.append(out / "metrics.json")
    return TestReport(out, metrics, files)


def _save(picture, path: Path) -> Path:
    save_png(picture, path)
    return path


@torch.no_grad()
def _reconstructions(model, split, cfg: TestConfig, device, out: Path) -> list[Path]:
    """reconstructions.png (up to 32 images above their reconstructions) and interpolation.png: rows from one image to
    another (the original, decoded steps between their codes, the other original)."""
    x = to_input(split.images[:32], device)
    y = split.labels[:32].to(device) if model.is_conditional else None
    files = [_save(for_viewing(reconstruction_grid(x, model.reconstruct(x, y)), x), out / "reconstructions.png")]
    if len(split.images) < 2:
        warnings.warn(f"no interpolation.png: the {cfg.split} split has one image, and an interpolation runs between two.", stacklevel=3)
        return files
    rows = min(cfg.interpolation.rows, len(split.images) // 2)
    picks = torch.randperm(len(split.images), generator=torch.Generator().manual_seed(cfg.seed))[: 2 * rows]
    x = to_input(split.images[picks], device)
    y = split.labels[picks].to(device) if model.is_conditional else None
    mu, _ = model.encode(x, y)
    steps = cfg.interpolation.steps
    weights = torch.linspace(0, 1, steps, device=device)
    images = []
    for r in range(rows):
        a, b = 2 * r, 2 * r + 1
        labels = None if y is None else torch.where(weights < 0.5, y[a], y[b])  # conditional codes live per class
        images += [x[a : a + 1], model.decode(slerp(mu[a], mu[b], weights), labels), x[b : b + 1]]
    images = torch.cat(images)
    return [*files, _save(for_viewing(image_grid(images, nrow=steps + 2), images), out / "interpolation.png")]


def _samples(model, cfg: TestConfig, path: Path) -> tuple[Path, float]:
    """A grid × grid grid of samples; conditional models: a labelled block per class, samples_per_class(grid²) each.
    Also the wall seconds per image of drawing them (each block in one batch, on the test's device)."""
    count = cfg.grid * cfg.grid
    started = time.perf_counter()
    if not reconstructs(model):  # a family without a decoder draws with its own generate
        images = generated_samples(model.model, count, cfg.seed, cfg.temperature)
    elif model.is_conditional:  # from the prior every block decodes the same codes: blocks differ only by the class
        per_class = samples_per_class(count, model.num_classes)
        images = per_class_samples(model.model, per_class, cfg.seed, cfg.temperature, model.sampler)
    else:
        images = model.sample(count, temperature=cfg.temperature, seed=cfg.seed)
    if images.is_cuda:  # the device's queued work is part of the time
        torch.cuda.synchronize(images.device)
    seconds_per_image = (time.perf_counter() - started) / max(1, len(images))
    if model.is_conditional:
        return _save(class_blocks(images, model.classes), path), seconds_per_image
    return _save(for_viewing(image_grid(images, nrow=cfg.grid), images), path), seconds_per_image


def _likelihood_terms(model, split, train_cfg) -> dict:
    """The family's validation terms as training computes them at β = 1 (a VAE's `nelbo` is the run's `val_nelbo`),
    without the objective; `recon_kind` names the reconstruction loss."""
    terms = validation_terms(model, family_of(train_cfg.model), split, train_cfg, 1.0, next(model.parameters()).device)
    named = {key.removeprefix("val_"): value for key, value in terms.items() if key != "val_loss"}
    if "recon" not in named:
        return named
    return {"recon": named.pop("recon"), "recon_kind": train_cfg.loss.recon, **named}


def _inception_weights(cfg: TestConfig) -> Path | None:
    """The Inception weights file, found (or downloaded) before anything is drawn; errors name this config's keys."""
    if "inception" in {network_of(name) for name in (cfg.backbone, *cfg.extra_backbones)}:
        return inception_weights(cfg.inception_weights, prefix="")
    if cfg.backbone == "auto":  # a wrong path is an error; no weights found picks efficientnet-lite0
        return inception_weights_path(cfg.inception_weights, prefix="")
    return None

