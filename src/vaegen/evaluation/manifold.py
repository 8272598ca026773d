"""Fidelity and diversity apart, where one Fréchet distance mixes them: precision and recall (Kynkäänniemi et al.
2019) and density and coverage (Naeem et al. 2020), from k-nearest-neighbour balls around feature vectors, and the
Inception Score (Salimans et al. 2016) of a classifier's logits.

Written here rather than taken whole: torch-fidelity has precision/recall but not density/coverage, and prdc
computes all four in numpy on the host; three distance matrices on the features' device give the four at once.
tests/test_manifold.py checks the values against both libraries.
"""

from __future__ import annotations

import torch
from torch_fidelity.metric_isc import isc_features_to_metric

ROWS_PER_CHUNK = 4096  # rows of a distance matrix held at once: 4096 × 10,000 real images is 160 MB


def _kth_neighbour_radius(features: torch.Tensor, k: int) -> torch.Tensor:
    """Each vector's distance to its k-th nearest other vector (the k+1-th counting itself, at distance 0)."""
    return torch.cat([torch.cdist(chunk, features).kthvalue(k + 1, dim=1).values for chunk in features.split(ROWS_PER_CHUNK)])


def _inside_counts(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each point, how many of the balls (centres, radii) hold it."""
    return torch.cat([(torch.cdist(chunk, centres) <= radii).sum(dim=1) for chunk in points.split(ROWS_PER_CHUNK)])


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    """The four k-NN estimates of generated features `fake` against `real`, [N, D] each, computed in float64.

    precision: share of generated vectors inside some real vector's k-NN ball (fidelity);
    recall: share of real vectors inside some generated vector's k-NN ball (diversity);
    density: real balls holding each generated vector, over k, averaged (fidelity, robust to real outliers; can exceed 1);
    coverage: share of real vectors whose ball holds its nearest generated vector (diversity, robust to fake outliers).
    """
    real, fake = real.double(), fake.double()
    real_radii = _kth_neighbour_radius(real, k)
    fake_radii = _kth_neighbour_radius(fake, k)
    fake_in_real = _inside_counts(fake, real, real_radii)
    return {
        "precision": float((fake_in_real > 0).double().mean()),
        "recall": float((_inside_counts(real, fake, fake_radii) > 0).double().mean()),
        "density": float(fake_in_real.double().mean() / k),
        "coverage": _coverage(real, fake, real_radii),
    }


def _coverage(real: torch.Tensor, fake: torch.Tensor, real_radii: torch.Tensor) -> float:
    """Share of real vectors whose nearest generated vector lies inside the real vector's own ball."""
    found = []
    for chunk, radii in zip(real.split(ROWS_PER_CHUNK), real_radii.split(ROWS_PER_CHUNK)):
        found.append(torch.cdist(chunk, fake).min(dim=1).values <= radii)
    return float(torch.cat(found).double().mean())


def usable_k(k: int, num_real: int, num_generated: int) -> int:
    """`k` where both sets have more than k vectors; else the largest k they allow (recorded in the protocol)."""
    return max(1, min(k, num_real - 1, num_generated - 1))


def inception_score(logits: torch.Tensor, splits: int, seed: int) -> tuple[float, float]:
    """Mean and standard deviation over `splits` shuffled splits of exp(E[KL(p(y|x) || p(y))]), torch-fidelity's."""
    result = isc_features_to_metric(logits.double().cpu(), splits=max(1, min(splits, len(logits))), shuffle=True, rng_seed=seed)
    return result["inception_score_mean"], result["inception_score_std"]
