"""`vaegen test` on checkpoints written by `vaegen train`: every file, the numbers, the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import sample_subset
from PIL import Image

from vaegen.apps.cli import main


@pytest.fixture(scope="module", params=["none", "onehot"])
def trained(request, tmp_path_factory, tiny_config):
    tmp_path = tmp_path_factory.mktemp(f"model-{request.param}")
    config = tiny_config(tmp_path, model={"conditional": request.param}, train={"epochs": 2})
    assert main(["train", "--config", str(config)]) == 0
    return tmp_path, request.param


def test_vaegen_test_writes_every_file(trained, capsys):
    tmp_path, conditional = trained
    out = tmp_path / "test-out"
    code = main([
        "test", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "test_apples.yaml"),
        "--checkpoint", str(tmp_path / "best" / "tiny"),
        "--set", f"output_dir={out}", "--set", "num_samples=24", "--set", "kid_subset_size=10",
        "--set", "backbone=efficientnet-lite0", "--set", "grid=4", "--set", "interpolation.rows=3",
        "--set", "interpolation.steps=5",
    ])
    assert code == 0
    # conditional models: samples.png is one labelled block per class (per_class.png was the same picture twice over)
    assert {"samples.png", "reconstructions.png", "interpolation.png", "metrics.json", "kl_per_dim.png", "traversals.png",
            "latent_map.png"} == {p.name for p in out.iterdir()}

    # 16 px tiles are written 6x (96 px), so they can be looked at
    with Image.open(out / "samples.png") as grid:
        if conditional == "onehot":  # 16 // 3 = 5 samples per class in one row, the names in a left margin
            margin = grid.width - 6 * (5 * 18 + 2)
            assert margin > 0 and grid.height == 6 * (3 * 18 + 2)
            names = np.asarray(grid.convert("L"))[:, :margin] < 128
            assert all(names[6 * 18 * k : 6 * 18 * (k + 1)].any() for k in range(3)), "a class has no name"
        else:
            assert grid.size == (6 * (4 * 18 + 2), 6 * (4 * 18 + 2))
    with Image.open(out / "interpolation.png") as grid:
        assert grid.size == (6 * (7 * 18 + 2), 6 * (3 * 18 + 2))  # original, 5 steps, original; 3 rows
    with Image.open(out / "reconstructions.png") as grid:
        assert grid.size == (6 * (8 * 18 + 2), 6 * (8 * 18 + 2))  # 32 validation images over their reconstructions

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["num_images"] == 60
    assert metrics["nelbo"] == pytest.approx(metrics["recon"] + metrics["kl"])
    # computed as training computes it (the same fixed noise): the number the run selected its model on
    # (it once decoded the posterior mean instead, and disagreed with val_nelbo by 10-20 %)
    selected = json.loads((tmp_path / "best" / "tiny" / "metrics.json").read_text())
    assert selected["criterion"] == "val_nelbo" and metrics["nelbo"] == pytest.approx(selected["value"], rel=1e-5)
    assert metrics["mse"] == pytest.approx(selected["metrics"]["val_mse"], rel=1e-5)
    assert metrics["fd_efficientnet_lite0"] > 0 and "kd_efficientnet_lite0" in metrics
    assert metrics["protocol"]["num_generated"] == 24 and metrics["protocol"]["num_real"] == 60
    assert metrics["protocol"]["backbone"] == "efficientnet-lite0" and metrics["protocol"]["feature_dim"] == 1280
    # the field's other numbers: k-NN fidelity and diversity, IS on EfficientNet-Lite0's ImageNet head, SSIM and PSNR
    assert all(0 <= metrics[f"{name}_efficientnet_lite0"] <= 1 for name in ("precision", "recall", "coverage"))
    assert metrics["density_efficientnet_lite0"] >= 0 and 1 <= metrics["is_efficientnet_lite0"] <= 1000
    assert metrics["is_efficientnet_lite0_std"] >= 0 and metrics["protocol"]["nearest_k"] == 5
    assert 0 < metrics["ssim"] <= 1 and 5 < metrics["psnr"] < 100 and "ms_ssim" not in metrics  # 16 px: no MS-SSIM
    printed = capsys.readouterr().out
    assert "fd_efficientnet_lite0" in printed and f"to {out}/" in printed


def test_vaegen_test_reports_the_likelihood_bounds_in_nats_and_bits_per_dim(trained, tmp_path):
    model_dir, conditional = trained
    best = str(model_dir / "best" / "tiny")
    settings = ["--set", "backbone=none", "--set", "grid=2", "--set", "likelihood.samples=16"]
    assert main(["test", "--checkpoint", best, "--set", f"output_dir={tmp_path / 'a'}", *settings]) == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    dims = 3 * 16 * 16
    for bound in ("iwae", "elbo"):
        nats = metrics[f"nll_{bound}_nats"]
        assert metrics[f"nll_{bound}_bits_per_dim"] == pytest.approx(nats / (np.log(2) * dims))
    assert metrics["nll_iwae_nats"] <= metrics["nll_elbo_nats"]  # the same draws: the IWAE bound is the tighter
    # the ELBO estimate agrees with the validation nelbo (the same decoder density as the mse loss, up to D/2·log π)
    assert metrics["nll_elbo_nats"] - dims / 2 * np.log(np.pi) == pytest.approx(metrics["nelbo"], rel=0.05)
    block = metrics["likelihood"]
    assert block["distribution"] == "gaussian" and block["sigma"] == pytest.approx(0.5**0.5) and block["discretised"] is False
    assert block["samples"] == 16 and block["num_images"] == 60 and block["dims"] == dims
    assert block["conditional"] is (conditional == "onehot")
    # deterministic given the seed; samples 0 turns it off
    assert main(["test", "--checkpoint", best, "--set", f"output_dir={tmp_path / 'b'}", *settings]) == 0
    again = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert again["nll_iwae_nats"] == metrics["nll_iwae_nats"]
    assert main(["test", "--checkpoint", best, "--set", f"output_dir={tmp_path / 'c'}", *settings, "--set", "likelihood.samples=0"]) == 0
    off = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert "likelihood" not in off and not any(key.startswith("nll_") for key in off)


def test_vaegen_test_needs_a_checkpoint(capsys):
    assert main(["test"]) == 2
    assert "needs a checkpoint" in capsys.readouterr().err


def test_vaegen_test_rejects_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert main(["test", "--checkpoint", str(tmp_path)]) == 2
    assert "not a vaegen model folder" in capsys.readouterr().err


def test_vaegen_test_names_a_missing_model_folder_and_the_ones_beside_it(trained, capsys):
    model_dir, _ = trained
    assert main(["test", "--checkpoint", str(model_dir / "best" / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"{model_dir / 'best' / 'nope'} does not exist" in err and f"Model folders in {model_dir / 'best'}: tiny." in err


def test_vaegen_load_takes_auto_and_refuses_a_device_that_is_not_one(trained):
    import torch

    import vaegen

    model_dir, _ = trained
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert next(vaegen.load(model_dir / "best" / "tiny", device="auto").parameters()).device.type == expected
    from vaegen.errors import ConfigError

    with pytest.raises(ConfigError, match="device is .gpu., which is not a device"):
        vaegen.load(model_dir / "best" / "tiny", device="gpu")


def test_vaegen_test_takes_the_weights_file_and_refuses_an_output_dir_that_is_a_file(trained, tmp_path, capsys):
    model_dir, _ = trained
    best = model_dir / "best" / "tiny"
    # once NotADirectoryError: the default output folder was made under the weights file
    assert main(["test", "--checkpoint", str(best / "model.safetensors"), "--set", "backbone=none", "--set", "grid=2"]) == 0
    assert (best / "test" / "metrics.json").is_file()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(best), "--set", "backbone=none", "--set", f"output_dir={blocker}"]) == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and "output_dir" in err and "is a file, not a folder" in err and "Traceback" not in err


def test_vaegen_test_data_errors_name_its_own_settings_and_skip_bad_works(trained, tmp_path, capsys):
    model_dir, _ = trained
    best = str(model_dir / "best" / "tiny")
    assert main(["test", "--checkpoint", best, "--set", "backbone=none", "--set", f"data_root={tmp_path / 'gone'}"]) == 2
    err = capsys.readouterr().err
    assert "--set data_root=path/to/images" in err and "data.root" not in err  # following the advice must work
    data = sample_subset(tmp_path / "few", {"Golden": 3, "Golden-Red": 3, "Red": 3})
    (data / "Red" / "broken.jpg").write_text("not a picture")
    common = ["--set", f"data_root={data}", "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "backbone=none",
              "--set", f"output_dir={tmp_path / 'out'}", "--set", "grid=2"]
    assert main(["test", "--checkpoint", best, *common]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "set skip_bad: true (--set skip_bad=true)" in err and "data.skip_bad" not in err
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image \(skip_bad is true\)"):
        assert main(["test", "--checkpoint", best, *common, "--set", "skip_bad=true"]) == 0


def test_vaegen_test_unknown_key(tmp_path, capsys):
    assert main(["test", "--checkpoint", str(tmp_path), "--set", "num_sample=3"]) == 2
    assert "did you mean `num_samples`?" in capsys.readouterr().err


def test_vaegen_test_on_all_images_scores_train_and_val(trained, tmp_path):
    model_dir, _ = trained
    out = tmp_path / "all"
    assert main(["test", "--checkpoint", str(model_dir / "best" / "tiny"), "--set", "split=all", "--set", "backbone=none",
                 "--set", f"output_dir={out}", "--set", "grid=2"]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 300


def test_vaegen_test_on_a_one_image_split_skips_the_interpolation_and_scores_the_rest(trained, tmp_path):
    model_dir, _ = trained
    data, out = sample_subset(tmp_path / "few", {"Golden": 1, "Golden-Red": 1, "Red": 2}), tmp_path / "out"
    with pytest.warns(UserWarning, match="no interpolation.png: the val split has one image"):
        code = main(["test", "--checkpoint", str(model_dir / "best" / "tiny"), "--set", f"data_root={data}",
                     "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "backbone=none", "--set", f"output_dir={out}", "--set", "grid=2"])
    assert code == 0  # it once stopped with a traceback from torch.cat, and wrote no metrics.json
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 1
    assert not (out / "interpolation.png").exists()


def test_vaegen_test_on_a_folder_too_small_for_the_models_split_names_its_own_setting(trained, tmp_path, capsys):
    model_dir, _ = trained
    data = sample_subset(tmp_path / "few", {"Golden": 1, "Golden-Red": 1, "Red": 1})
    assert main(["test", "--checkpoint", str(model_dir / "best" / "tiny"), "--set", f"data_root={data}",
                 "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "backbone=none"]) == 2
    err = capsys.readouterr().err
    assert f"data_root {data} is too small for a validation split" in err and "(leave data_root out)" in err
    assert "data.val_fraction" not in err and "output.select" not in err  # training's fix, which vaegen test cannot take


def test_vaegen_test_of_a_model_trained_without_a_validation_split_says_which_split_to_use(trained, tmp_path, capsys):
    import shutil

    import yaml

    model_dir, _ = trained
    model = shutil.copytree(model_dir / "best" / "tiny", tmp_path / "no-val")
    config = yaml.safe_load((model / "config.yaml").read_text())  # as `vaegen train` writes it for data.val_fraction: 0
    config["data"]["val_fraction"], config["output"]["select"], config["eval"]["backbone"] = 0.0, "fid", "efficientnet-lite0"
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    code = main(["test", "--checkpoint", str(model), "--set", "backbone=none", "--set", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "the val split of" in err and "has no images" in err and "(--set split=train)" in err
    assert main(["test", "--checkpoint", str(model), "--set", "backbone=none", "--set", "split=train",
                 "--set", f"output_dir={tmp_path / 'out'}", "--set", "grid=2"]) == 0


def test_vaegen_test_scores_the_same_samples_on_extra_backbones(trained, tmp_path, monkeypatch, two_backbones):
    import vaegen.evaluation.backbones

    model_dir, _ = trained

    def scores(name: str, *settings: str) -> dict:
        out = tmp_path / name
        # its own cache: the stand-in networks must not meet real features cached under the same names
        common = (f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}", "num_samples=24", "kid_subset_size=10")
        sets = [arg for setting in (*common, *settings) for arg in ("--set", setting)]
        assert main(["test", "--checkpoint", str(model_dir / "best" / "tiny"), *sets]) == 0
        return json.loads((out / "metrics.json").read_text())

    both = scores("both", "backbone=efficientnet-lite0", "extra_backbones=[dinov2]")
    alone = scores("alone", "backbone=dinov2")
    assert both["fd_dinov2"] == pytest.approx(alone["fd_dinov2"], rel=1e-9) and "fd_efficientnet_lite0" in both
    assert both["protocol"]["extra_backbones"] == ["dinov2 (8-d, none (test backbone), fp32)"]
    assert alone["protocol"]["extra_backbones"] == []

    # "auto" without Inception weights is EfficientNet-Lite0: listed again as an extra, it is scored once
    monkeypatch.setattr(vaegen.evaluation.backbones, "resolve_backbone_name", lambda name, weights=None: "efficientnet-lite0")
    auto = scores("auto", "backbone=auto", "extra_backbones=[efficientnet-lite0,dinov2]")
    assert auto["protocol"]["extra_backbones"] == both["protocol"]["extra_backbones"]
    assert auto["fd_efficientnet_lite0"] == pytest.approx(both["fd_efficientnet_lite0"], rel=1e-9)


def test_vaegen_test_refuses_a_network_listed_twice(trained, capsys):
    model_dir, _ = trained
    checkpoint = str(model_dir / "best" / "tiny")
    for repeat in ("backbone=dinov2 extra_backbones=[dinov2]", "extra_backbones=[dinov2,dinov2]"):
        sets = [arg for setting in repeat.split() for arg in ("--set", setting)]
        assert main(["test", "--checkpoint", checkpoint, *sets]) == 2
        assert "repeats a network" in capsys.readouterr().err


def test_vaegen_test_given_a_training_run_or_its_state_names_the_runs_model_folder(trained, capsys):
    """logs/<run> and its checkpoints/last.pt are the usual mix-ups for best_models/<run>: last.pt was once
    called a corrupt safetensors file, with advice to retrain."""
    model_dir, _ = trained
    run = model_dir / "logs" / "tiny"
    for given, what in [(run, "log folder"), (run / "checkpoints" / "last.pt", "training state")]:
        assert main(["test", "--checkpoint", str(given)]) == 2
        err = capsys.readouterr().err
        assert f"{given} is " in err and what in err and "not a model folder" in err
        assert str(model_dir / "best" / "tiny") in err
        assert "safetensors" not in err


@pytest.mark.parametrize("settings", [
    ("backbone=inception",),
    ("backbone=efficientnet-lite0", "extra_backbones=[inception]"),
    ("backbone=auto", "inception_weights=typo.pth"),
])
def test_vaegen_test_names_its_own_inception_settings(trained, tmp_path, monkeypatch, capsys, settings):
    # they once named eval.inception_weights and eval.backbone, keys of the training config that `vaegen test` refuses
    import vaegen.evaluation.backbones

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights
    monkeypatch.delenv(vaegen.evaluation.backbones.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(vaegen.evaluation.backbones, "INCEPTION_URL", "https://weights.invalid/inception.pth")  # offline, at once
    monkeypatch.chdir(tmp_path)
    model_dir, _ = trained
    sets = [arg for setting in (f"output_dir={tmp_path / 'out'}", *settings) for arg in ("--set", setting)]
    assert main(["test", "--checkpoint", str(model_dir / "best" / "tiny"), *sets]) == 2
    err = capsys.readouterr().err
    assert "inception_weights" in err and "eval." not in err and "Traceback" not in err
    if "typo.pth" not in settings[-1]:
        assert "--set inception_weights=PATH" in err and "--set backbone=efficientnet-lite0" in err
    assert not (tmp_path / "out").exists()  # found out before anything is drawn
