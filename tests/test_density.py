"""Ex-post latent mixture (sampler.name: gmm): fitting, storage without pickle, seeded sampling, use in train/test/API."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import vaegen
from vaegen.apps.cli import main
from vaegen.errors import CheckpointError
from vaegen.samplers.mixture import SAMPLER_FILE, LatentGMM, fit_latent_gmm


def two_clusters(n: int = 400, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes around +3 (label 0, a quarter of them) and -3 (label 1) on every axis."""
    generator = torch.Generator().manual_seed(0)
    labels = (torch.arange(n) >= n // 4).long()
    centres = torch.where(labels[:, None] == 0, 3.0, -3.0).expand(n, dim)
    return centres + 0.5 * torch.randn(n, dim, generator=generator), labels


def test_fit_recovers_the_clusters():
    codes, _ = two_clusters()
    gmm = fit_latent_gmm(codes, None, num_groups=1, components=2, covariance="full", seed=0)
    order = gmm.means[0, :, 0].argsort()
    assert gmm.means[0, order, 0].tolist() == pytest.approx([-3.0, 3.0], abs=0.15)
    assert gmm.weights[0, order].tolist() == pytest.approx([0.75, 0.25], abs=0.01)
    covariance = gmm.scale_tril[0, 0] @ gmm.scale_tril[0, 0].T
    assert torch.diagonal(covariance).tolist() == pytest.approx([0.25] * 4, abs=0.06)


def test_samples_follow_the_mixture_and_the_seed():
    codes, _ = two_clusters()
    gmm = fit_latent_gmm(codes, None, 1, 2, "diag", seed=0)
    first = gmm.sample(2000, torch.Generator().manual_seed(3))
    again = gmm.sample(2000, torch.Generator().manual_seed(3))
    other = gmm.sample(2000, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first[:, 0] > 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    cold = gmm.sample(2000, torch.Generator().manual_seed(3), temperature=0.0)
    assert set(cold[:, 0].round().tolist()) == {-3.0, 3.0}  # temperature 0: the component means


def test_one_mixture_per_class():
    codes, labels = two_clusters()
    gmm = fit_latent_gmm(codes, labels, num_groups=2, components=3, covariance="full", seed=0)
    assert gmm.weights.shape == (2, 3) and gmm.weights.sum(1).tolist() == pytest.approx([1.0, 1.0])
    generator = torch.Generator().manual_seed(0)
    assert (gmm.sample(300, generator, torch.tensor(0))[:, 0] > 0).all()
    assert (gmm.sample(300, generator, torch.tensor(1))[:, 0] < 0).all()
    mixed = gmm.sample(4, generator, torch.tensor([0, 1, 0, 1]))
    assert (mixed[:, 0] > 0).tolist() == [True, False, True, False]


def test_a_class_smaller_than_the_mixture_gets_fewer_components():
    codes, labels = two_clusters(n=40)
    labels[:] = 1
    labels[:3] = 0
    gmm = fit_latent_gmm(codes, labels, 2, components=5, covariance="diag", seed=0)
    assert (gmm.weights[0] > 0).sum().item() == 3 and (gmm.weights[1] > 0).sum().item() == 5
    with pytest.raises(ValueError, match="class 0 has 1 training image"):
        labels[:2] = 1
        fit_latent_gmm(codes, labels, 2, 5, "diag", seed=0)


def test_save_and_load_without_pickle(tmp_path):
    codes, labels = two_clusters()
    gmm = fit_latent_gmm(codes, labels, 2, 2, "full", seed=0)
    gmm.save(tmp_path / SAMPLER_FILE, {"epoch": 7})
    loaded = LatentGMM.load(tmp_path / SAMPLER_FILE)
    for name in ("weights", "means", "scale_tril"):
        assert torch.equal(getattr(loaded, name), getattr(gmm, name))
    assert loaded.covariance == "full"
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(loaded.sample(10, generator(), torch.tensor(1)), gmm.sample(10, generator(), torch.tensor(1)))


def test_a_file_that_is_not_a_mixture_is_refused(tmp_path):
    save_file({"weights": torch.ones(1)}, str(tmp_path / "a.safetensors"), metadata={"kind": json.dumps("flow")})
    with pytest.raises(CheckpointError, match="not a vaegen Gaussian-mixture sampler"):
        LatentGMM.load(tmp_path / "a.safetensors")
    (tmp_path / "b.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="b.safetensors is not a readable latent sampler"):
        LatentGMM.load(tmp_path / "b.safetensors")


def test_training_with_the_mixture_reports_both_samplers_and_ships_it(tmp_path, counting_backbone, fid_config):
    config = fid_config(tmp_path, sampler={"name": "gmm", "components": 3}, model={"conditional": "onehot"})
    assert main(["train", "--config", str(config)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    scored = [row for row in rows if "fd_efficientnet_lite0" in row]
    assert scored and all(row["fd_efficientnet_lite0_prior"] > 0 and row["kd_efficientnet_lite0_prior_std"] >= 0 for row in scored)
    assert all(row["fd_efficientnet_lite0"] != row["fd_efficientnet_lite0_prior"] for row in scored)

    best = tmp_path / "best" / "tiny"
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["protocol"]["sampler"] == "gmm"
    model = vaegen.load(best)
    assert model.latent_density is not None and model.latent_density.weights.shape == (3, 3)  # a mixture per class
    assert torch.equal(model.sample(6, labels=[0, 1, 2, 0, 1, 2], seed=4), model.sample(6, labels=[0, 1, 2, 0, 1, 2], seed=4))
    from_mixture = model.sample(6, labels=2, seed=4)
    model.latent_density = None
    assert not torch.allclose(from_mixture, model.sample(6, labels=2, seed=4))  # the prior gives other images
    with pytest.raises(ValueError, match="pass labels"):
        vaegen.load(best).sample(2)

    # vaegen test samples from the shipped mixture by default, and reports the prior beside it
    assert main(["test", "--checkpoint", str(best), "--set", "num_samples=64", "--set", "backbone=efficientnet-lite0"]) == 0
    test_metrics = json.loads((best / "test" / "metrics.json").read_text())
    assert test_metrics["sampler"] == "gmm" and "fd_efficientnet_lite0_prior" in test_metrics
    assert main(["test", "--checkpoint", str(best), "--set", "sampler=prior", "--set", "num_samples=64"]) == 0
    assert json.loads((best / "test" / "metrics.json").read_text())["sampler"] == "prior"

    (best / SAMPLER_FILE).unlink()  # a folder copied without it
    with pytest.warns(UserWarning, match="sampler.safetensors is missing"):
        assert vaegen.load(best).latent_density is None


def test_vaegen_test_fits_a_mixture_for_a_prior_checkpoint(tmp_path, counting_backbone, fid_config):
    assert main(["train", "--config", str(fid_config(tmp_path))]) == 0
    best = tmp_path / "best" / "tiny"
    assert not (best / SAMPLER_FILE).exists()
    assert main(["test", "--checkpoint", str(best), "--set", "sampler=gmm", "--set", "num_samples=64"]) == 0
    metrics = json.loads((best / "test" / "metrics.json").read_text())
    assert metrics["sampler"] == "gmm" and metrics["fd_efficientnet_lite0"] != metrics["fd_efficientnet_lite0_prior"]
