"""Fréchet and kernel distances between generated and real images, with precision, recall, density, coverage and
the Inception Score on the same features (evaluation.manifold), and the protocol stamped on.

A distance is comparable only with one measured the same way (network, image counts, reference split,
resolution), so each metric's name says its network (`fid_inception` is the standard FID,
`fd_efficientnet_lite0` is not) and comes with a `protocol` block. Real features are cached on disk per
(dataset fingerprint, split, backbone); the math is torchmetrics', fed those features.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

import vaegen
from vaegen.checkpoint import atomic_write
from vaegen.data.dataset import FEATURES_FOLDER, FROM_ENTRY, default_cache_dir
from vaegen.errors import DataError, check_finite_outputs, pixel_size, plural
from vaegen.evaluation.manifold import inception_score, precision_recall_density_coverage, usable_k
from vaegen.samplers.draw import gmm_sampler, prior_sampler

FEATURE_FORMAT = 1  # bump when feature extraction changes, so cached real features are recomputed
# Under torchrun only process 0 scores: a metric that synced across processes would wait for ones that never join.
LOCAL_ONLY = {"sync_on_compute": False, "dist_sync_on_step": False}


def metric_names(backbone: str) -> tuple[str, str]:
    """Names for (Fréchet, kernel) distance: `fid_`/`kid_` only for the standard Inception feature."""
    if backbone == "inception":
        return "fid_inception", "kid_inception"
    return f"fd_{network_slug(backbone)}", f"kd_{network_slug(backbone)}"


def network_slug(backbone: str) -> str:
    """The network's part of a metric's name: precision_efficientnet_lite0, is_inception."""
    return backbone.replace("-", "_").replace("inception_64", "inception64")


def protocol_text(protocol: dict, sampling: bool = True) -> str:
    """How a distance was measured, in one line, from a saved (maybe hand-edited) protocol block; `sampling`: with how
    the samples were drawn (the model's side, which `vaegen compare` says per run)."""
    p = defaultdict(lambda: "?", protocol)
    size = pixel_size(*p["image_size"]) if isinstance(p["image_size"], list) and len(p["image_size"]) == 2 else "?"
    return (f"{p['backbone']} features ({p['feature_dim']}-d), {p['num_generated']} generated vs {p['num_real']} real "
            f"{p['reference']} images at {size}" + (f", {sampling_text(protocol)}" if sampling else ""))


def sampling_text(protocol: dict) -> str:
    return f"{protocol.get('sampler', '?')} sampler, T={protocol.get('temperature', '?')}"


class _Features(nn.Identity):
    """Identity 'extractor': torchmetrics is fed features we computed (and cached) ourselves."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features


@torch.no_grad()
def extract_features(backbone: nn.Module, images_u8: torch.Tensor, batch_size: int, device: torch.device, desc: str) -> torch.Tensor:
    """Backbone features of uint8 images [N, C, H, W], in batches, as float32 on the CPU."""
    chunks = []
    for start in tqdm(range(0, len(images_u8), batch_size), desc=desc, unit="batch", leave=False, disable=None):
        batch = images_u8[start : start + batch_size].to(device).float().div_(255.0)
        chunks.append(backbone(batch).float().cpu())
    return torch.cat(chunks)


def real_cache_file(cache_dir: Path, fingerprint: str, split: str, backbone: str) -> Path:
    key = hashlib.sha256(json.dumps([FEATURE_FORMAT, fingerprint, split, backbone]).encode()).hexdigest()[:20]
    return Path(cache_dir) / FEATURES_FOLDER / f"{backbone}-{split}-{key}.safetensors"


def real_features(
    backbone: nn.Module, images_u8: torch.Tensor, cache_file: Path, batch_size: int, device: torch.device,
    data_fingerprint: str,
) -> torch.Tensor:
    """Features of the real images, from the cache when it holds them; a new entry names `data_fingerprint` (the
    decoded images' cache key), so it goes when that entry is pruned."""
    if cache_file.is_file():
        with contextlib.suppress(Exception):  # a damaged cache is recomputed, never trusted
            cached = load_file(str(cache_file))["features"]
            if len(cached) == len(images_u8):
                return cached
    # said first: minutes on a CPU, and silent where progress bars are off (not a terminal)
    tqdm.write(f"{getattr(backbone, 'name', 'backbone')} features of {len(images_u8)} real images: computed once, "
               f"then read from {cache_file.parent}")
    features = extract_features(backbone, images_u8, batch_size, device, desc="real features")
    with contextlib.suppress(OSError):  # a read-only cache only costs time
        atomic_write(cache_file, lambda tmp: save_file({"features": features.contiguous()}, str(tmp), metadata={FROM_ENTRY: data_fingerprint}))
    return features


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Features(real.shape[1]), **LOCAL_ONLY).to(real.device)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subset_size: int, seed: int) -> tuple[float, float]:
    """Unbiased KID (mean, std over subsets); torchmetrics draws subsets from the global RNG, so fork it."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # its memory warning is about images; we hold only features
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        metric = KernelInceptionDistance(feature=_Features(real.shape[1]), subset_size=size, subsets=50, **LOCAL_ONLY).to(real.device)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


@dataclass(eq=False)  # tensors inside: no field-wise ==
class Evaluator:
    """Scores a generator against fixed real features: `score(generate)` -> metrics dict with protocol."""

    backbone: nn.Module
    real: torch.Tensor  # the reference images' features
    reference: str
    image_size: tuple[int, int]
    num_samples: int
    batch_size: int
    kid_subset_size: int
    device: torch.device
    seed: int = 0
    # second opinions: other networks with their real features, fed the very same samples
    extras: list[tuple[nn.Module, torch.Tensor]] = field(default_factory=list)
    nearest_k: int = 5  # the k of precision, recall, density and coverage (Naeem et al.'s choice)
    is_splits: int = 10  # the Inception Score's splits, as published

    def __post_init__(self) -> None:
        self.real = self.real.to(self.device)  # the distance math runs where the features are made
        self.extras = [(network, features.to(self.device)) for network, features in self.extras]
        self.image_size = tuple(self.image_size)

    @property
    def networks(self) -> list[str]:
        """The scoring networks' names, the one that selects checkpoints first."""
        return [self.backbone.name, *(network.name for network, _ in self.extras)]

    @torch.no_grad()
    def score(self, generate: Callable[[int, torch.Generator], torch.Tensor], sampler: str = "prior", temperature: float = 1.0) -> dict:
        """`generate(n, generator)` returns n images in [0, 1]; its randomness comes from `generator` only."""
        import torchmetrics

        generator = torch.Generator().manual_seed(self.seed)
        networks = [(self.backbone, self.real), *self.extras]
        chunks: list[list[torch.Tensor]] = [[] for _ in networks]
        nonfinite = torch.zeros((), dtype=torch.long, device=self.device)  # counted on the device: no sync per batch
        for start in tqdm(range(0, self.num_samples, self.batch_size), desc="scoring samples", unit="batch", leave=False, disable=None):
            n = min(self.batch_size, self.num_samples - start)
            images = generate(n, generator).to(self.device).float()
            nonfinite += (~torch.isfinite(images.flatten(1))).any(dim=1).sum()
            for (network, _), features in zip(networks, chunks):
                features.append(network(images).float())
        check_finite_outputs(int(nonfinite), self.num_samples, "generated images")
        scores = {}
        for (network, real), features in zip(networks, chunks):
            fd_name, kd_name = metric_names(network.name)
            fake = torch.cat(features)
            check_finite_outputs(int((~torch.isfinite(fake)).any(dim=1).sum()), len(fake), f"{network.name} features of generated images")
            kid_mean, kid_std = kernel_distance(real, fake, self.kid_subset_size, self.seed)
            scores |= {fd_name: frechet_distance(real, fake), kd_name: kid_mean, f"{kd_name}_std": kid_std}
            scores |= self.fidelity_and_diversity(network, real, fake)
        libraries = {"vaegen": vaegen.__version__, "torch": torch.__version__, "torchmetrics": torchmetrics.__version__,
                     "python": platform.python_version()}
        protocol = {  # numbers are comparable only when this matches; extra_backbones scored the very same samples
            "backbone": self.backbone.name, "feature_dim": int(self.real.shape[1]), "num_generated": self.num_samples,
            "num_real": len(self.real), "reference": self.reference, "image_size": list(self.image_size),
            "resize": self.backbone.resize, "backbone_precision": getattr(self.backbone, "precision", "fp32"),
            "sampler": sampler, "temperature": temperature,
            "kid_subset_size": min(self.kid_subset_size, len(self.real), self.num_samples),
            "nearest_k": usable_k(self.nearest_k, len(self.real), self.num_samples),
            "is_splits": min(self.is_splits, self.num_samples), "libraries": libraries,
            "extra_backbones": [f"{net.name} ({feats.shape[1]}-d, {net.resize}, {getattr(net, 'precision', 'fp32')})"
                                for net, feats in self.extras],
        }
        return {**scores, "protocol": protocol}


    def fidelity_and_diversity(self, network: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """Precision, recall, density and coverage of one network's features, and the Inception Score of its logits
        where it classifies (the standard IS on Inception; EfficientNet-Lite0's ImageNet head offline)."""
        slug = network_slug(network.name)
        k = usable_k(self.nearest_k, len(real), len(fake))
        scores = {f"{name}_{slug}": value for name, value in precision_recall_density_coverage(real, fake, k).items()}
        logits = network.logits(fake)
        if logits is not None:
            scores[f"is_{slug}"], scores[f"is_{slug}_std"] = inception_score(logits, self.is_splits, self.seed)
        return scores


def score_model(
    evaluator: Evaluator, model: nn.Module, temperature: float, class_weights: torch.Tensor | None, density=None, has_prior: bool = True
) -> dict:
    """Scores of the model's samples: with a fitted latent mixture, the mixture's under the plain names (fd_x) and the
    prior's beside them (fd_x_prior); a family without a prior (an autoencoder) is scored on the mixture alone."""
    mixture = None if density is None else evaluator.score(gmm_sampler(model, density, temperature, class_weights), "gmm", temperature)
    if not has_prior:
        return mixture
    scores = evaluator.score(prior_sampler(model, temperature, class_weights), "prior", temperature)
    if mixture is None:
        return scores
    return {**mixture, **{prior_name(key): value for key, value in scores.items() if key != "protocol"}}


def prior_name(metric: str) -> str:
    """fd_x -> fd_x_prior, kd_x_std -> kd_x_prior_std."""
    return f"{metric[:-4]}_prior_std" if metric.endswith("_std") else f"{metric}_prior"


def warn_if_covariance_is_singular(names: tuple[str, str], dim: int, num_real: int, num_generated: int) -> None:
    """Warns when a side has no more images than feature dimensions: its covariance is singular, biasing FD upward."""
    short = [f"{count} {side} images" for side, count in (("real", num_real), ("generated", num_generated)) if count <= dim]
    if short:
        fd_name, kd_name = names
        warnings.warn(f"{fd_name} compares {dim}-d features of only {' and '.join(short)}, fewer than the "
                      f"dimensions: the covariance is singular, so {fd_name} is biased upward and changes with the "
                      f"number of images. Compare it only between runs with the same real images and number of samples "
                      f"(metrics.json's protocol); {kd_name} (KID, unbiased at any count) says how far the samples are "
                      f"from the real ones.", stacklevel=3)


def eval_batch_size(value: int | str, device: torch.device) -> int:
    """`auto`: large batches feed a GPU; small ones suit the CPU's depthwise convolutions."""
    if value != "auto":
        return int(value)
    return 1000 if device.type == "cuda" else 64


def build_evaluator(
    settings, reference: str, data_cfg, splits, seed: int, device: torch.device, reference_key: str = "eval.reference"
) -> Evaluator | None:
    """The Evaluator for a run or a test (None when the backbone is "none"). `settings` is a training config's `eval`
    or `vaegen test`'s config; `reference_key` names `reference` in it, for the error when it holds too few images."""
    # imported here, where tests can swap them for small stand-ins
    from vaegen.evaluation.backbones import load_backbone, resolve_backbone_name, second_opinions

    if settings.backbone == "none":
        return None
    images = splits.select(reference).images
    split_name = "all" if reference == "all" else f"{reference}-seed{seed}-val{data_cfg.val_fraction}"  # its cache key
    if len(images) < 2:  # a covariance of one image does not exist
        raise DataError(
            f"{reference_key}: {reference} holds {plural(len(images), 'image')}, and the Fréchet distance needs at least 2 "
            f"real images to compare with. Compare with all of them ({reference_key}: all), or add images."
        )
    cache_dir = Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()
    batch_size = eval_batch_size(settings.batch_size, device)

    def network_and_real_features(name: str):
        # building a network draws random initial weights: the training's random stream must not depend on it
        with torch.random.fork_rng(devices=[]):
            network = load_backbone(name, device, settings.inception_weights)
        # features differ (slightly) between precisions, so each precision has its own cache entry
        cache_file = real_cache_file(cache_dir, splits.train.fingerprint, split_name, f"{name}-{getattr(network, 'precision', 'fp32')}")
        return network, real_features(network, images, cache_file, batch_size, device, splits.train.fingerprint)

    name = resolve_backbone_name(settings.backbone, settings.inception_weights)
    network, real = network_and_real_features(name)
    extras = [network_and_real_features(extra) for extra in second_opinions(name, settings.extra_backbones)]
    for scoring_network, features in [(network, real), *extras]:
        warn_if_covariance_is_singular(metric_names(scoring_network.name), features.shape[1], len(features), settings.num_samples)
    return Evaluator(network, real, reference, data_cfg.image_size, settings.num_samples, batch_size, settings.kid_subset_size,
                     device, seed, extras, settings.nearest_k, settings.is_splits)


def run_evaluator(config, splits, device: torch.device) -> Evaluator | None:
    """build_evaluator with a training config's eval settings (train, and scripts scoring trained runs)."""
    return build_evaluator(config.eval, config.eval.reference, config.data, splits, config.train.seed, device)
