"""Latent diagnostics of a latent family (a module with `encode`/`decode`): how much each latent dimension is used
(KL per dimension and active units), what each of the most used ones does (traversals), and how the codes of the
classes lie (a PCA and a t-SNE map of the posterior means).

Everything comes from the module's `encode(x, labels)`, which returns (posterior mean, log-variance), the log-variance
None for a deterministic code: without it there is no KL, and dimensions are ranked by the variance of their codes.
`vaegen test` writes the pictures beside samples.png; the gallery's "Latent space" tab shows the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from vaegen.config import DiagnosticsConfig
from vaegen.data.dataset import DecodedImages, to_input
from vaegen.models.losses import standard_normal_kl
from vaegen.plots import labelled_rows, latent_map_figure, ranked_bars, view_scale

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: a dimension is active when Cov_x(E_q[z_d | x]) exceeds this
TRAVERSAL_SPAN = 3.0  # traversals run from -3 to +3 standard deviations of each dimension around the base code
TSNE_PERPLEXITY = 30.0


@dataclass(frozen=True, eq=False)
class LatentStats:
    """The posterior means of a set of images [N, D] (CPU), their labels [N], and per dimension: the mean KL to N(0, 1)
    (None for a code without a log-variance) and the spread of z_d under the aggregate posterior."""

    means: torch.Tensor
    labels: torch.Tensor
    kl_per_dim: torch.Tensor | None
    aggregate_std: torch.Tensor

    @property
    def mean_variance(self) -> torch.Tensor:
        """Cov_x(E_q[z_d | x]) per dimension: the variance of the posterior means across the images."""
        return self.means.var(0, unbiased=False)

    @property
    def active_units(self) -> int:
        return active_units(self.means)

    def ranking(self) -> torch.Tensor:
        """Dimensions, most used first: by KL where there is one, else by the variance of the codes."""
        score = self.kl_per_dim if self.kl_per_dim is not None else self.mean_variance
        return torch.argsort(score, descending=True, stable=True)

    def metrics(self) -> dict:
        """What metrics.json records: latent_dim, active_units and the per-dimension numbers."""
        numbers = {"latent_dim": self.means.shape[1], "active_units": self.active_units,
                   "posterior_mean_variance_per_dim": [round(v, 6) for v in self.mean_variance.tolist()]}
        if self.kl_per_dim is not None:
            numbers["kl_per_dim"] = [round(v, 6) for v in self.kl_per_dim.tolist()]
        return numbers


def active_units(means: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """How many dimensions' posterior means vary across the images by more than `threshold` (Burda et al. 2016)."""
    return int((means.var(0, unbiased=False) > threshold).sum())


@torch.no_grad()
def latent_statistics(model: nn.Module, data: DecodedImages, batch_size: int) -> LatentStats:
    """Encode every image of `data` (with its label where the model is conditional) in batches of `batch_size`."""
    device = next(model.parameters()).device
    means, kls, variances = [], [], []
    for images, labels in zip(data.images.split(batch_size), data.labels.split(batch_size)):
        mu, logvar = model.encode(to_input(images, device), labels.to(device) if model.is_conditional else None)
        means.append(mu.float().cpu())
        if logvar is not None:
            kls.append(standard_normal_kl(mu.float(), logvar.float()).sum(0).cpu())
            variances.append(logvar.float().exp().sum(0).cpu())
    means = torch.cat(means)
    kl = torch.stack(kls).sum(0) / len(means) if kls else None
    # law of total variance: Var(z_d) = Var_x(E[z_d | x]) + E_x[Var(z_d | x)], the second term 0 for a plain code
    within = torch.stack(variances).sum(0) / len(means) if variances else torch.zeros(means.shape[1])
    return LatentStats(means, data.labels.clone(), kl, (means.var(0, unbiased=False) + within).sqrt())


@torch.no_grad()
def traversals(model: nn.Module, stats: LatentStats, base: torch.Tensor, label: torch.Tensor | None,
               dims: int, steps: int) -> tuple[torch.Tensor, list[int]]:
    """Decoded images [dims * steps, C, H, W]: one row per most-used dimension, the `base` code [D] with that dimension
    moved from -TRAVERSAL_SPAN to +TRAVERSAL_SPAN aggregate standard deviations; decoded with `label` if conditional."""
    device = next(model.parameters()).device
    chosen = stats.ranking()[:dims].tolist()
    offsets = torch.linspace(-TRAVERSAL_SPAN, TRAVERSAL_SPAN, steps)
    codes = base.float().cpu().repeat(len(chosen) * steps, 1)
    for row, dim in enumerate(chosen):
        codes[row * steps:(row + 1) * steps, dim] += offsets * stats.aggregate_std[dim]
    labels = None if label is None else label.to(device).reshape(1).expand(len(codes))
    return model.decode(codes.to(device), labels).float().cpu(), chosen


def two_d_maps(means: torch.Tensor, tsne: bool, seed: int) -> dict[str, np.ndarray]:
    """The codes [N, D] in two dimensions: "PCA" always (the first two principal components), "t-SNE" if asked and
    there are at least three points (perplexity clamped below the number of points); missing axes are zero."""
    centred = means.double() - means.double().mean(0)
    rank = min(2, *means.shape)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)  # exact: codes are narrow, pca_lowrank approximates
    pca = torch.zeros(len(means), 2, dtype=torch.float64)
    pca[:, :rank] = centred @ right[:rank].T
    maps = {"PCA": pca.numpy()}
    if tsne and len(means) >= 3:
        from sklearn.manifold import TSNE  # a second of import: only when a map is drawn

        perplexity = min(TSNE_PERPLEXITY, (len(means) - 1) / 3)
        embedding = TSNE(2, perplexity=perplexity, init="pca" if means.shape[1] >= 2 else "random", random_state=seed)
        maps["t-SNE"] = embedding.fit_transform(means.double().numpy())
    return maps


def latent_pictures(model: nn.Module, data: DecodedImages, cfg: DiagnosticsConfig, seed: int,
                    batch_size: int) -> tuple[LatentStats, dict[str, Image.Image]]:
    """The statistics of `data`'s codes and the pictures, by file name: kl_per_dim.png (or code_variance_per_dim.png
    for a code without a KL), traversals.png and latent_map.png (where there are two codes to place)."""
    stats = latent_statistics(model, data, batch_size)
    pictures = {_chart_name(stats): _usage_chart(stats)}
    label = data.labels[0] if model.is_conditional else None
    images, chosen = traversals(model, stats, stats.means[0], label, cfg.traversal_dims, cfg.traversal_steps)
    pictures["traversals.png"] = labelled_rows(images, [_dimension_name(stats, dim) for dim in chosen],
                                               cfg.traversal_steps, view_scale(images))
    if len(stats.means) >= 2:
        picks = torch.randperm(len(stats.means), generator=torch.Generator().manual_seed(seed))[: cfg.map_points]
        picks = picks.sort().values
        maps = two_d_maps(stats.means[picks], cfg.tsne, seed)
        pictures["latent_map.png"] = latent_map_figure(maps, stats.labels[picks].numpy(), data.classes,
                                                       f"posterior means of {len(picks)} images")
    return stats, pictures


def _chart_name(stats: LatentStats) -> str:
    return "kl_per_dim.png" if stats.kl_per_dim is not None else "code_variance_per_dim.png"


def _usage_chart(stats: LatentStats) -> Image.Image:
    """Each dimension's KL (else its code variance), sorted, active dimensions coloured, the count in the title."""
    active = (stats.mean_variance > ACTIVE_THRESHOLD).tolist()
    summary = (f"{stats.active_units} of {stats.means.shape[1]} dimensions active: variance of the posterior means "
               f"> {ACTIVE_THRESHOLD:g}\n(Burda et al. 2016; inactive ones grey)")
    if stats.kl_per_dim is not None:
        return ranked_bars(stats.kl_per_dim.tolist(), active, "KL(q(z_d | x) ‖ N(0, 1)), mean over the images", summary)
    return ranked_bars(stats.mean_variance.tolist(), active, "variance of the code z_d over the images (no KL: "
                       "a deterministic code)", summary, threshold=ACTIVE_THRESHOLD)


def _dimension_name(stats: LatentStats, dim: int) -> str:
    if stats.kl_per_dim is not None:
        return f"z{dim}  KL {stats.kl_per_dim[dim]:.2f}"
    return f"z{dim}  var {stats.mean_variance[dim]:.2g}"
