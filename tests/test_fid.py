"""Fréchet/kernel distances, the real-feature cache, and FID-driven checkpoint selection."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CountingBackbone
from safetensors import safe_open

import vaegen.evaluation.backbones
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.data.dataset import FROM_ENTRY
from vaegen.evaluation.frechet import frechet_distance, kernel_distance, metric_names

REPO = Path(__file__).resolve().parents[1]
SHARED_APPLES = REPO.parent / "shared" / "data" / "apples"


def reference_fd(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The textbook formula in NumPy, independently of torchmetrics.

    tr sqrt(A B) = sum of sqrt(eigenvalues of sqrt(A) B sqrt(A)), a symmetric PSD matrix.
    """
    a, b = real.double().numpy(), fake.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def test_frechet_distance_matches_the_formula():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(400, 12, generator=generator)
    fake = torch.randn(300, 12, generator=generator) * 1.5 + 0.3
    assert frechet_distance(real, fake) == pytest.approx(reference_fd(real, fake), rel=1e-4)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_with_noise_large():
    real = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    assert abs(frechet_distance(real, real)) < 1e-3
    noise = torch.rand(500, 16, generator=torch.Generator().manual_seed(2)) * 10
    assert frechet_distance(real, noise) > 100


def test_kernel_distance_small_for_same_distribution_large_for_shift():
    generator = torch.Generator().manual_seed(3)
    real, same, shifted = (torch.randn(300, 8, generator=generator) for _ in range(3))
    same_mean, _ = kernel_distance(real, same, subset_size=100, seed=0)
    far_mean, _ = kernel_distance(real, shifted + 3, subset_size=100, seed=0)
    assert abs(same_mean) < 0.05 < far_mean
    assert kernel_distance(real, shifted + 3, subset_size=100, seed=0)[0] == far_mean  # seeded subsets


def test_metric_names_say_which_network():
    assert metric_names("inception") == ("fid_inception", "kid_inception")
    assert metric_names("inception-64") == ("fd_inception64", "kd_inception64")
    assert metric_names("efficientnet-lite0") == ("fd_efficientnet_lite0", "kd_efficientnet_lite0")


def test_best_checkpoint_follows_lowest_fid_and_real_features_are_cached(tmp_path, counting_backbone, capsys, fid_config):
    assert main(["train", "--config", str(fid_config(tmp_path, train={"epochs": 4}))]) == 0
    # 240 real training images once, then 40 samples per evaluation
    assert counting_backbone.images_seen == 240 + 4 * 40
    # said before the work, which is silent where progress bars are off
    assert "features of 240 real images: computed once, then read from" in capsys.readouterr().out
    [features] = (tmp_path / "cache" / "features").glob("*.safetensors")
    [entry] = (tmp_path / "cache").glob("*.safetensors")
    with safe_open(str(features), framework="pt") as handle:  # so that they go when the decoded images' entry goes
        assert entry.name.endswith(f"-{handle.metadata()[FROM_ENTRY]}.safetensors")
    rows = [json.loads(line) for line in (tmp_path / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    fds = [row["fd_efficientnet_lite0"] for row in rows]
    assert all("kd_efficientnet_lite0" in row and "kd_efficientnet_lite0_std" in row for row in rows)
    for row in rows:  # the same samples' fidelity and diversity, IS from the network's logits, reconstructions' quality
        assert all(0 <= row[f"{name}_efficientnet_lite0"] <= 1 for name in ("precision", "recall", "coverage"))
        assert row["density_efficientnet_lite0"] >= 0 and row["is_efficientnet_lite0"] >= 1
        assert -1 <= row["val_ssim"] <= 1 and 0 < row["val_psnr"] < 100
    metrics = json.loads((tmp_path / "best" / "tiny" / "metrics.json").read_text())
    assert metrics["criterion"] == "fd_efficientnet_lite0"
    assert metrics["value"] == min(fds) and metrics["epoch"] == 1 + fds.index(min(fds))
    protocol = metrics["protocol"]
    assert protocol["backbone"] == "efficientnet-lite0" and protocol["feature_dim"] == 8
    assert protocol["num_generated"] == 40 and protocol["num_real"] == 240 and protocol["reference"] == "train"
    assert protocol["image_size"] == [16, 16] and protocol["sampler"] == "prior"
    assert protocol["nearest_k"] == 5 and protocol["is_splits"] == 10
    assert {"torch", "torchmetrics", "vaegen"} <= set(protocol["libraries"])

    # a second run on the same data passes no real image through the backbone
    counting_backbone.images_seen = 0
    assert main(["train", "--config", str(fid_config(tmp_path / "again", train={"epochs": 1}, data={"cache_dir": str(tmp_path / "cache")}))]) == 0
    assert counting_backbone.images_seen == 40
    assert "real images: computed once" not in capsys.readouterr().out


def test_an_export_reuses_its_evaluation_epochs_sample_picture(tmp_path, counting_backbone, fid_config, monkeypatch):
    import vaegen.training.loop as loop
    from PIL import Image

    drawn = []
    draw = loop.sample_picture
    monkeypatch.setattr(loop, "sample_picture", lambda *args, **kwargs: drawn.append(1) or draw(*args, **kwargs))
    assert main(["train", "--config", str(fid_config(tmp_path, train={"epochs": 3}))]) == 0
    assert len(drawn) == 3  # one per evaluation; every improving epoch's export took that epoch's picture
    best = json.loads((tmp_path / "best" / "tiny" / "metrics.json").read_text())["epoch"]
    exported = np.asarray(Image.open(tmp_path / "best" / "tiny" / "samples.png"))
    assert np.array_equal(exported, np.asarray(Image.open(tmp_path / "logs" / "tiny" / f"samples_epoch{best:04d}.png")))


def test_a_distance_on_fewer_images_than_feature_dimensions_says_it_is_biased(tmp_path, counting_backbone, fid_config):
    config = fid_config(tmp_path, train={"epochs": 1}, eval={"num_samples": 8, "batch_size": 8, "kid_subset_size": 8})
    with pytest.warns(UserWarning) as caught:
        assert main(["train", "--config", str(config)]) == 0
    [message] = [str(w.message) for w in caught if "covariance is singular" in str(w.message)]
    # 8-d features: 240 real images are enough, 8 generated ones are not
    assert message.startswith("fd_efficientnet_lite0 compares 8-d features of only 8 generated images, fewer than the dimensions")
    assert "kd_efficientnet_lite0 (KID, unbiased at any count)" in message
    assert "covariance is singular" in (tmp_path / "logs" / "tiny" / "train.log").read_text()


@pytest.mark.parametrize(("num_real", "num_generated", "said"), [
    (300, 64, "of only 300 real images and 64 generated images"),
    (2000, 1280, "of only 1280 generated images"),
    (1281, 1281, None),
])
def test_the_singular_covariance_warning_names_the_short_side(num_real, num_generated, said):
    from vaegen.evaluation.frechet import warn_if_covariance_is_singular

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_covariance_is_singular(("fd_x", "kd_x"), 1280, num_real, num_generated)
    assert [said in str(w.message) for w in caught] == ([] if said is None else [True])


def test_resume_stays_exact_with_fid_evaluations(tmp_path, counting_backbone, fid_config):
    assert main(["train", "--config", str(fid_config(tmp_path / "a", train={"epochs": 3}))]) == 0
    assert main(["train", "--config", str(fid_config(tmp_path / "b", train={"epochs": 2}))]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=3"]) == 0
    a = load_training_state(tmp_path / "a" / "logs" / "tiny" / "checkpoints" / "last.pt")["model"]
    b = load_training_state(tmp_path / "b" / "logs" / "tiny" / "checkpoints" / "last.pt")["model"]
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6


@pytest.mark.skipif(not SHARED_APPLES.is_dir(), reason="../shared/data/apples is absent")
def test_two_halves_of_real_apples_are_close_with_efficientnet(tmp_path):
    from vaegen.config import DataConfig
    from vaegen.data.dataset import load_images
    from vaegen.evaluation.frechet import extract_features

    images = load_images(DataConfig(root=SHARED_APPLES, image_size=32, cache_dir=tmp_path / "cache")).images
    picks = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:600]
    backbone = vaegen.evaluation.backbones.load_backbone("efficientnet-lite0")
    features = extract_features(backbone, images[picks], 50, torch.device("cpu"), desc="apples")
    halves = frechet_distance(features[:300], features[300:])
    noise = extract_features(backbone, torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8), 50, torch.device("cpu"), desc="noise")
    against_noise = frechet_distance(features[:300], noise)
    assert halves < 0.1 * against_noise
    assert halves < 30  # 300 vs 300 images: mostly the small-sample bias (all 4495 images give about 1)


def test_pipeline_equals_torchmetrics_fed_images_directly():
    """Our features-then-distance path gives what torchmetrics computes when it runs the network itself."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from vaegen.evaluation.frechet import extract_features

    backbone = CountingBackbone()
    generator = torch.Generator().manual_seed(5)
    real = torch.randint(0, 256, (120, 3, 16, 16), dtype=torch.uint8, generator=generator)
    fake = (real.float() * 0.7).to(torch.uint8)
    ours = frechet_distance(
        extract_features(backbone, real, 32, torch.device("cpu"), "real"),
        extract_features(backbone, fake, 32, torch.device("cpu"), "fake"),
    )
    theirs = FrechetInceptionDistance(feature=backbone)
    theirs.update(real.float() / 255, real=True)
    theirs.update(fake.float() / 255, real=False)
    assert ours == pytest.approx(float(theirs.compute()), rel=1e-6)


def test_eval_batch_size_auto_depends_on_the_device():
    from vaegen.evaluation.frechet import eval_batch_size

    assert eval_batch_size("auto", torch.device("cpu")) == 64
    assert eval_batch_size("auto", torch.device("cuda")) == 1000
    assert eval_batch_size(7, torch.device("cuda")) == 7


def test_extra_backbones_score_the_very_same_samples(tmp_path, tiny_config, two_backbones):
    def run(name: str, **eval_settings) -> dict:
        settings = {"every": 1, "num_samples": 40, "batch_size": 20, "kid_subset_size": 20, **eval_settings}
        assert main(["train", "--config", str(tiny_config(tmp_path / name, train={"epochs": 1}, eval=settings, output={"select": "fid"}))]) == 0
        return json.loads((tmp_path / name / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()[0])

    both = run("both", backbone="efficientnet-lite0", extra_backbones=["dinov2"])
    assert two_backbones.images_seen == 2 * (240 + 40)  # each network: the real images once, the 40 samples
    assert {"fd_efficientnet_lite0", "kd_efficientnet_lite0", "fd_dinov2", "kd_dinov2", "kd_dinov2_std"} <= both.keys()
    assert both["fd_dinov2"] != both["fd_efficientnet_lite0"]
    assert {"precision_dinov2", "coverage_dinov2", "is_efficientnet_lite0"} <= both.keys()
    assert "is_dinov2" not in both  # a network without a classifier has no Inception Score
    metrics = json.loads((tmp_path / "both" / "best" / "tiny" / "metrics.json").read_text())
    assert metrics["criterion"] == "fd_efficientnet_lite0"  # the first network selects
    assert metrics["protocol"]["extra_backbones"] == ["dinov2 (8-d, none (test backbone), fp32)"]
    # the second network alone, same seed: the same training (building networks leaves the training's random
    # stream alone) and the same samples, so the same distances
    alone = run("alone", backbone="dinov2")
    assert alone["fd_dinov2"] == pytest.approx(both["fd_dinov2"], rel=1e-9)
    assert alone["kd_dinov2"] == pytest.approx(both["kd_dinov2"], rel=1e-9)
