"""The model-family seam: a family written in a few lines (module, loss terms, samples) trains, resumes exactly, is
scored and tested, and loads with `vaegen.load`, through vaegen's own commands; and the autoencoder family does too."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import vaegen
from vaegen.apps import gallery
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.models import Family


class PixelGaussian(nn.Module):
    """Every pixel an independent Gaussian: a mean and a log-std per pixel, fitted by maximum likelihood."""

    def __init__(self, cfg, image_size, channels, num_classes=1):
        super().__init__()
        self.mean = nn.Parameter(torch.full((channels, *image_size), 0.5))
        self.log_std = nn.Parameter(torch.zeros(channels, *image_size))
        self.is_conditional, self.num_classes = False, num_classes

    def forward(self, x, labels=None):
        return self.mean, self.log_std

    def generate(self, n, generator, temperature=1.0, class_weights=None):
        noise = torch.randn(n, *self.mean.shape, generator=generator).to(self.mean.device)
        return (self.mean + temperature * noise * self.log_std.exp()).clamp(0, 1)


class PixelGaussianFamily(Family):
    name = "pixel_gaussian"
    terms = ("loss", "nll")
    headline = val_headline = {"nll": "NLL"}

    def training_terms(self, outputs, x, beta, loss):
        mean, log_std = outputs
        nll = (((x - mean) / log_std.exp()).pow(2) / 2 + log_std).flatten(1).sum(1).mean()
        return {"loss": nll, "nll": nll}


@pytest.fixture
def pixel_gaussian(register_for_this_test):
    """`model.name: pixel_gaussian`, registered for this test only."""
    register_for_this_test("pixel_gaussian", PixelGaussian, PixelGaussianFamily())
    return "pixel_gaussian"


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_family_defined_in_a_test_trains_resumes_scores_and_loads(tmp_path, pixel_gaussian, capsys, tiny_config):
    settings = {"model": {"name": pixel_gaussian}, "optim": {"lr": 0.05}, "output": {"select": "val_loss"},
                "eval": {"every": 2, "backbone": "efficientnet-lite0", "num_samples": 16}}
    straight = tiny_config(tmp_path / "a", train={"epochs": 3}, **settings)
    assert main(["train", "--config", str(straight)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "(NLL " in out and "fd_efficientnet_lite0" in out  # the family's own terms on the epoch line
    run = tmp_path / "a" / "logs" / "tiny"
    logged = rows(run)
    assert [row["epoch"] for row in logged] == [1, 2, 3]
    assert logged[-1]["train_nll"] < logged[0]["train_nll"] and "val_nll" in logged[-1]  # it learns, and is validated
    assert ["fd_efficientnet_lite0" in row for row in logged] == [False, True, True]  # scored on its own samples
    assert (run / "samples_epoch0002.png").is_file() and not (run / "recon_epoch0002.png").exists()  # nothing to reconstruct

    halves = tiny_config(tmp_path / "b", train={"epochs": 2}, **{**settings, "eval": {"backbone": "none"}})  # scoring moves no weight
    assert main(["train", "--config", str(halves)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=3"]) == 0
    a, b = (load_training_state(tmp_path / name / "logs" / "tiny" / "checkpoints" / "last.pt")["model"] for name in "ab")
    assert all(torch.allclose(a[key], b[key], atol=1e-6, rtol=0) for key in a)  # resumed exactly

    model = vaegen.load(tmp_path / "a" / "best" / "tiny")
    assert isinstance(model.model, PixelGaussian) and model.classes == ["Golden", "Golden-Red", "Red"]
    images = model.sample(4, seed=0)
    assert images.shape == (4, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.sample(4, seed=0)) and not torch.equal(images, model.sample(4, seed=1))
    assert gallery.sample_view(model, 4, seed=0, temperature=1.0).images.shape == (4, 3, 16, 16)  # the gallery shows it

    capsys.readouterr()
    assert main(["test", "--checkpoint", str(tmp_path / "a" / "best" / "tiny"), "--set", "num_samples=16"]) == 0
    report = json.loads((tmp_path / "a" / "best" / "tiny" / "test" / "metrics.json").read_text())
    best = json.loads((tmp_path / "a" / "best" / "tiny" / "metrics.json").read_text())
    assert report["split"] == "val" and report["nll"] == pytest.approx(best["metrics"]["val_nll"], rel=1e-5)  # as training measured it
    assert report["fd_efficientnet_lite0"] > 0 and "likelihood" not in report  # a family without likelihood bounds
    assert sorted(path.name for path in (tmp_path / "a" / "best" / "tiny" / "test").iterdir()) == ["metrics.json", "samples.png"]


def test_the_autoencoder_trains_on_its_mixture_resumes_and_tests(tmp_path, capsys, tiny_config):
    settings = {"model": {"name": "conv_ae"}, "sampler": {"name": "gmm", "components": 3}, "output": {"select": "fid"},
                "eval": {"every": 1, "backbone": "efficientnet-lite0", "num_samples": 16}}
    config = tiny_config(tmp_path, train={"epochs": 2}, **settings)
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--resume", str(tmp_path / "logs" / "tiny"), "--set", "train.epochs=3"]) == 0
    logged = rows(tmp_path / "logs" / "tiny")
    assert [row["epoch"] for row in logged] == [1, 2, 3]
    assert all(row["train_latent_l2"] > 0 and "train_kl" not in row for row in logged)  # its own regulariser, no KL
    assert all("fd_efficientnet_lite0" in row and "fd_efficientnet_lite0_prior" not in row for row in logged)  # no prior
    best = tmp_path / "best" / "tiny"
    assert (best / "sampler.safetensors").is_file()
    model = vaegen.load(best)
    assert model.sample(4, seed=0).shape == (4, 3, 16, 16)  # from the mixture it ships with
    assert main(["test", "--checkpoint", str(best), "--set", "num_samples=16"]) == 0
    assert {"samples.png", "reconstructions.png", "interpolation.png"} <= {path.name for path in (best / "test").iterdir()}
    report = json.loads((best / "test" / "metrics.json").read_text())  # no likelihood, so no bounds
    assert "likelihood" not in report and not any(key.startswith("nll_") for key in report)
    assert main(["test", "--checkpoint", str(best), "--set", "sampler=prior", "--set", "backbone=none"]) == 2
    assert "no prior" in capsys.readouterr().err


def test_the_autoencoder_without_a_mixture_sampler_is_refused_before_training(tmp_path, capsys, tiny_config):
    config = tiny_config(tmp_path, model={"name": "conv_ae"})
    assert main(["train", "--config", str(config)]) == 2
    assert "sampler.name: gmm" in capsys.readouterr().err
    assert not (tmp_path / "logs" / "tiny").exists()


@pytest.mark.parametrize("setting", [{"adversarial": {"enabled": True}}, {"loss": {"perceptual": "inception"}}])
def test_image_space_options_on_a_family_without_forward_images_are_refused_before_training(
    tmp_path, capsys, tiny_config, pixel_gaussian, setting
):
    key = "adversarial.enabled" if "adversarial" in setting else "loss.perceptual"
    config = tiny_config(tmp_path, model={"name": pixel_gaussian}, eval={"backbone": "efficientnet-lite0", "extra_backbones": ["dinov2"]},
                         **setting)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert key in err and "pixel_gaussian" in err and "Traceback" not in err
    assert not (tmp_path / "logs" / "tiny" / "checkpoints").exists()  # nothing trained
