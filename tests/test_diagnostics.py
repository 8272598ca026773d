"""Latent diagnostics (vaegen.evaluation.latents): KL per dimension, active units, traversals, the 2-D maps, and what
`vaegen test` writes of them for a VAE, a conditional VAE and an autoencoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.distributions import Normal, kl_divergence

from vaegen.apps.cli import main
from vaegen.config import DiagnosticsConfig
from vaegen.data.dataset import DecodedImages
from vaegen.evaluation.latents import active_units, latent_pictures, latent_statistics, traversals, two_d_maps

DIAGNOSTICS = {"kl_per_dim.png", "code_variance_per_dim.png", "traversals.png", "latent_map.png"}


class StubEncoder(nn.Module):
    """Image i (its one pixel holds i) encodes to row i of `mu` and `logvar` (logvar None: a deterministic code);
    decoding returns one gray image per code, its value the code's first coordinate squashed into [0, 1]."""

    is_conditional = False

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.mu, self.logvar = mu, logvar

    def encode(self, x, labels=None):
        index = (x[:, 0, 0, 0] * 255).round().long()
        return self.mu[index], None if self.logvar is None else self.logvar[index]

    def decode(self, z, labels=None):
        return torch.sigmoid(z[:, :1, None, None]).expand(-1, 1, 4, 4)


def indexed_images(count: int, classes: int = 2) -> DecodedImages:
    images = torch.arange(count, dtype=torch.uint8).reshape(count, 1, 1, 1)
    labels = torch.arange(count) % classes
    return DecodedImages(images, labels, [f"class {k}" for k in range(classes)], [f"{i}.png" for i in range(count)], [], "")


def hand_made_posteriors(count: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Four dimensions: 0 and 3 vary across images (active), 1 is constant and 2 varies by far under 0.01 (inactive)."""
    signs = torch.tensor([(-1.0) ** i for i in range(count)])
    mu = torch.stack([signs, torch.full((count,), 0.5), 0.01 * signs, 3.0 * signs + 1.0], dim=1)
    logvar = torch.stack([torch.full((count,), -1.0), torch.zeros(count), torch.full((count,), 0.3),
                          torch.linspace(-2.0, 0.0, count)], dim=1)
    return mu, logvar


def test_kl_per_dimension_and_active_units_on_hand_made_posteriors():
    mu, logvar = hand_made_posteriors()
    stats = latent_statistics(StubEncoder(mu, logvar), indexed_images(10), batch_size=3)  # 3 + 3 + 3 + 1
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(stats.kl_per_dim, expected, atol=1e-6)
    # a posterior equal to the prior costs nothing; dimension 1 sits off its mean: ½·0.5² = 0.125
    assert stats.kl_per_dim[1].item() == pytest.approx(0.125)
    assert torch.allclose(stats.mean_variance, torch.tensor([1.0, 0.0, 1e-4, 9.0]), atol=1e-6)
    assert stats.active_units == active_units(mu) == 2  # the constant and the barely moving dimension are inactive
    assert torch.equal(stats.ranking(), torch.argsort(expected, descending=True))
    # the aggregate posterior's spread: variance of the means + mean posterior variance
    assert stats.aggregate_std[0].item() == pytest.approx((1.0 + np.exp(-1.0)) ** 0.5)
    metrics = stats.metrics()
    assert metrics["latent_dim"] == 4 and metrics["active_units"] == 2
    assert metrics["kl_per_dim"] == pytest.approx(expected.tolist(), abs=1e-6)


def test_a_code_without_a_log_variance_is_ranked_by_its_variance_and_has_no_kl():
    mu, _ = hand_made_posteriors()
    stats = latent_statistics(StubEncoder(mu, None), indexed_images(10), batch_size=4)
    assert stats.kl_per_dim is None and "kl_per_dim" not in stats.metrics()
    assert stats.ranking().tolist() == [3, 0, 2, 1] and stats.active_units == 2
    assert torch.allclose(stats.aggregate_std, stats.mean_variance.sqrt())
    _, pictures = latent_pictures(StubEncoder(mu, None), indexed_images(10), DiagnosticsConfig(tsne=False), 0, 4)
    assert set(pictures) == {"code_variance_per_dim.png", "traversals.png", "latent_map.png"}


def test_traversals_move_one_dimension_of_the_base_code_from_minus_to_plus_three_deviations():
    mu, logvar = hand_made_posteriors()
    model = StubEncoder(mu, logvar)
    stats = latent_statistics(model, indexed_images(10), batch_size=10)
    images, chosen = traversals(model, stats, stats.means[0], None, dims=2, steps=5)
    assert chosen == [3, 0] and images.shape == (10, 1, 4, 4)
    first_row, second_row = images[:5, 0, 0, 0], images[5:, 0, 0, 0]
    assert torch.allclose(first_row, torch.full((5,), torch.sigmoid(mu[0, 0]).item()))  # z3 does not reach the stub's pixel
    moved = mu[0, 0] + torch.linspace(-3, 3, 5) * stats.aggregate_std[0]
    assert torch.allclose(second_row, torch.sigmoid(moved), atol=1e-6)


def test_two_d_maps_pca_always_tsne_from_three_points():
    codes = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    maps = two_d_maps(codes, tsne=True, seed=0)
    assert set(maps) == {"PCA", "t-SNE"} and maps["PCA"].shape == maps["t-SNE"].shape == (40, 2)
    assert np.array_equal(maps["t-SNE"], two_d_maps(codes, tsne=True, seed=0)["t-SNE"])  # seeded
    # PCA keeps the most variance: its first axis holds at least as much as any coordinate axis
    assert maps["PCA"][:, 0].var() >= codes.double().var(0, unbiased=False).max().item() - 1e-9
    assert set(two_d_maps(codes[:2], tsne=True, seed=0)) == {"PCA"}  # t-SNE needs more points than its perplexity
    assert two_d_maps(codes[:5, :1], tsne=True, seed=0)["t-SNE"].shape == (5, 2)  # one latent dimension


@pytest.fixture(scope="module", params=["vae", "cvae", "ae"])
def trained(request, tmp_path_factory, tiny_config):
    tmp_path = tmp_path_factory.mktemp(f"diagnostics-{request.param}")
    model = {"vae": {}, "cvae": {"conditional": "onehot"}, "ae": {"name": "conv_ae"}}[request.param]
    sections = {"sampler": {"name": "gmm", "components": 2}, "output": {"select": "val_recon"}} if request.param == "ae" else {}
    config = tiny_config(tmp_path, model=model, train={"epochs": 1}, **sections)
    assert main(["train", "--config", str(config)]) == 0
    return tmp_path, request.param


def vaegen_test(model_dir, out, *settings) -> dict:
    assert main(["test", "--checkpoint", str(model_dir / "best" / "tiny"), "--set", f"output_dir={out}",
                 "--set", "backbone=none", "--set", "grid=2", *(arg for s in settings for arg in ("--set", s))]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_vaegen_test_writes_the_latent_diagnostics(trained, tmp_path):
    model_dir, kind = trained
    metrics = vaegen_test(model_dir, tmp_path, "diagnostics.traversal_dims=3", "diagnostics.traversal_steps=5",
                          "diagnostics.map_points=40")
    chart = "code_variance_per_dim.png" if kind == "ae" else "kl_per_dim.png"
    assert {p.name for p in tmp_path.iterdir()} & DIAGNOSTICS == {chart, "traversals.png", "latent_map.png"}
    with Image.open(tmp_path / "traversals.png") as picture:  # 16 px tiles written 6x, the dimensions in a left margin
        assert picture.height == 6 * (3 * 18 + 2) and picture.width > 6 * (5 * 18 + 2)
        margin = picture.width - 6 * (5 * 18 + 2)
        names = np.asarray(picture.convert("L"))[:, :margin] < 128
        assert all(names[6 * 18 * k: 6 * 18 * (k + 1)].any() for k in range(3)), "a row has no label"
    with Image.open(tmp_path / "latent_map.png") as picture:
        assert picture.width > picture.height  # two panels side by side
    assert metrics["latent_dim"] == 8 and 0 <= metrics["active_units"] <= 8
    assert len(metrics["posterior_mean_variance_per_dim"]) == 8
    if kind == "ae":
        assert "kl_per_dim" not in metrics
    else:  # the dimensions' KLs add up to the model's KL term on the same images
        assert len(metrics["kl_per_dim"]) == 8 and sum(metrics["kl_per_dim"]) == pytest.approx(metrics["kl"], rel=1e-4)


def test_vaegen_test_without_diagnostics_writes_none_of_them(trained, tmp_path):
    model_dir, _ = trained
    metrics = vaegen_test(model_dir, tmp_path, "diagnostics.enabled=false")
    assert not {p.name for p in tmp_path.iterdir()} & DIAGNOSTICS
    assert "active_units" not in metrics and "latent_dim" not in metrics
