"""Precision, recall, density, coverage, the Inception Score and reconstruction SSIM/PSNR: hand-made cases with known
values, and agreement with the libraries they come from."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SAMPLE_CLASSES, sample_subset

from vaegen.config import DataConfig
from vaegen.data.dataset import load_splits
from vaegen.evaluation.manifold import inception_score, precision_recall_density_coverage, usable_k
from vaegen.evaluation.reconstruction import PSNR_CAP_DB, reconstruction_quality


def test_four_estimates_of_a_hand_made_case():
    # real 0..3 (every k=1 ball has radius 1); fakes 0.5 and 2.5 sit in two real balls each, 10 and 11 in none;
    # the fakes' own k=1 balls (radius 2 around 0.5 and 2.5) hold every real point
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [2.5], [10.0], [11.0]])
    scores = precision_recall_density_coverage(real, fake, k=1)
    assert scores == {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    # moved away by 4, no fake lies in a real ball nor covers one; only real 3 lies in a fake's ball (4.5's)
    scores = precision_recall_density_coverage(real, fake + 4, k=1)
    assert scores["precision"] == 0.0 and scores["density"] == 0.0 and scores["coverage"] == 0.0
    assert scores["recall"] == 0.25


def test_four_estimates_agree_with_prdc_and_torch_fidelity():
    prdc = pytest.importorskip("prdc")
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=generator)
    fake = 1.3 * torch.randn(250, 16, generator=generator) + 0.2
    for k in (3, 5):
        ours = precision_recall_density_coverage(real, fake, k)
        theirs = prdc.compute_prdc(real.numpy(), fake.numpy(), nearest_k=k)
        assert ours == pytest.approx({name: float(value) for name, value in theirs.items()}, abs=1e-9)
        precision, recall = calculate_precision_recall_full(fake, real, neighborhood=k)
        assert (ours["precision"], ours["recall"]) == pytest.approx((precision, recall), abs=1e-6)
    assert 0.2 < ours["precision"] < 0.8 and ours["recall"] > 0.9  # a wider fake cloud: diverse, less faithful


def test_k_is_lowered_to_what_the_sets_allow():
    assert usable_k(5, 100, 100) == 5 and usable_k(5, 4, 100) == 3 and usable_k(5, 100, 2) == 1


def test_inception_score_of_confident_and_of_collapsed_predictions():
    one_hot = 100.0 * torch.eye(10).repeat(100, 1)  # 1,000 confident predictions, 100 per class
    mean, std = inception_score(one_hot, splits=1, seed=0)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == 0.0
    collapsed = 100.0 * torch.eye(10)[torch.zeros(1000, dtype=torch.long)]  # every sample the same class
    assert inception_score(collapsed, splits=10, seed=0) == pytest.approx((1.0, 0.0), abs=1e-6)
    uncertain = torch.zeros(1000, 10)  # uniform predictions carry no information
    assert inception_score(uncertain, splits=10, seed=0)[0] == pytest.approx(1.0)


class _Copy(torch.nn.Module):
    """Reconstructs each image exactly, or with `noise` added."""

    is_conditional = False

    def __init__(self, noise: float = 0.0):
        super().__init__()
        self.noise = noise

    def reconstruct(self, x, y=None):
        return x + self.noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))


def test_ssim_and_psnr_of_identical_and_of_noisy_reconstructions(tmp_path):
    root = sample_subset(tmp_path / "data", dict.fromkeys(SAMPLE_CLASSES, 5))
    data = load_splits(DataConfig(root=root, image_size=16, cache_dir=tmp_path / "cache", val_fraction=0.5), 0).val
    exact = reconstruction_quality(_Copy(), data, batch_size=4, device=torch.device("cpu"))
    assert exact == {"ssim": pytest.approx(1.0), "psnr": PSNR_CAP_DB}  # 16 px: too small for MS-SSIM's five scales
    noisy = reconstruction_quality(_Copy(noise=0.1), data, batch_size=4, device=torch.device("cpu"))
    assert noisy["ssim"] < 0.9
    # clamped to [0, 1], the noise's mean square stays just under 0.01: a PSNR just over 20 dB
    assert 20.0 < noisy["psnr"] < 20.0 + 10 * math.log10(2)
    tiny = load_splits(DataConfig(root=root, image_size=8, cache_dir=tmp_path / "cache", val_fraction=0.5), 0).val
    assert reconstruction_quality(_Copy(), tiny, batch_size=4, device=torch.device("cpu")) == {"psnr": PSNR_CAP_DB}  # no SSIM window fits
