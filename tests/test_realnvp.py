"""The RealNVP flow (model.name: realnvp): it inverts, its log-determinant is the Jacobian's, a new flow starts at the
identity and learns, temperature sets the spread of its samples, and a tiny run goes through `vaegen train` (selected
by FD, resumed exactly), `vaegen test` (the exact NLL of the dequantized images) and `vaegen.load`; bad configs are
refused before training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import vaegen
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.config import config_from_dict, load_config
from vaegen.data.dataset import TEST_SETTINGS, load_splits, to_input
from vaegen.models import build_model, family_of
from vaegen.models.flow import CouplingNet, logit_transform

REPO = Path(__file__).resolve().parents[1]
SMALL = {"name": "realnvp", "flow_scales": 2, "flow_couplings": 2, "flow_width": 8, "flow_blocks": 1}


def flow(image_size=(16, 32), channels=3, **model):
    config = config_from_dict({"data": {"root": "unused", "image_size": list(image_size), "channels": channels},
                               "model": {**SMALL, "widths": [8], **model}, "output": {"select": "val_loss"}})
    family_of(config.model).check(config)  # refused as the training loop would refuse it
    return build_model(config.model, image_size, channels, num_classes=1), family_of(config.model), config


def scrambled(model, std=0.05):
    """The flow with random weights in the last layer of every coupling net too: a new flow is the identity, which
    would hide a wrong inverse."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CouplingNet):
                module.out.weight.normal_(0, std)
                module.out.bias.normal_(0, std)
    return model


def test_the_inverse_undoes_the_flow_in_float32():
    model = scrambled(flow(flow_scales=3)[0])
    assert [shape for shape in model.latent_shapes] == [(6, 8, 16), (12, 4, 8), (12, 4, 8)]  # C·H·W kept: 1536
    y = torch.rand(5, 3, 16, 32)
    z, log_det = model.to_latent(y)
    assert z.dtype == torch.float32 and z.shape == (5, 3 * 16 * 32) and log_det.shape == (5,)
    assert (log_det - logit_transform(y)[1]).abs().max() > 1.0  # the couplings do move the density
    assert (model.from_latent(z) - y).abs().max() < 1e-4


def test_the_log_determinant_is_the_brute_force_jacobians():
    model, _, _ = flow(image_size=(4, 4), channels=1)  # a checkerboard, a squeeze, channel couplings, a factor-out
    model = scrambled(model.double(), std=0.3)
    y = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: model.to_latent(v.view(1, 1, 4, 4))[0].view(-1), y.view(-1))
    sign, log_abs_det = torch.linalg.slogdet(jacobian)
    assert jacobian.shape == (16, 16) and sign == 1
    assert model.to_latent(y)[1].item() == pytest.approx(log_abs_det.item(), abs=1e-8)


def test_a_new_flow_is_the_logit_map_and_its_nll_falls_at_lr_1e_3():
    model, family, config = flow()
    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 32)).float() / 255
    y = torch.rand_like(x)
    z, log_det = model.to_latent(y)
    w, logit_det = logit_transform(y)
    assert torch.allclose(log_det, logit_det) and torch.allclose(model.from_latent(z), y, atol=1e-5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        terms = family.training_terms(model(x), x, 1.0, config.loss)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    dims = 3 * 16 * 32
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0] - 0.01 * dims
    assert terms["bits_per_dim"].item() == pytest.approx(terms["loss"].item() / (dims * math.log(2)))


def test_temperature_zero_draws_the_mode_and_temperature_sets_the_spread():
    model = scrambled(flow()[0], std=0.02).eval()
    cold = model.generate(4, torch.Generator().manual_seed(0), temperature=0.0)
    assert all(torch.equal(cold[0], image) for image in cold)  # z = 0 for every sample
    assert torch.equal(cold, model.generate(4, torch.Generator().manual_seed(1), temperature=0.0))
    spread = [model.generate(64, torch.Generator().manual_seed(0), temperature=t).std(0).mean().item() for t in (0.3, 1.0)]
    assert 0 < spread[0] < 0.5 * spread[1]
    images = model.generate(3, torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 16, 32) and 0 <= images.min() and images.max() <= 1


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_flow_trains_by_fd_resumes_exactly_tests_and_loads(tmp_path, tiny_config, fid_config, capsys):
    straight = fid_config(tmp_path / "a", train={"epochs": 2}, model=SMALL)
    assert main(["train", "--config", str(straight)]) == 0
    assert "bits/dim" in capsys.readouterr().out  # the epoch line shows it
    logged = rows(tmp_path / "a" / "logs" / "tiny")
    assert [row["epoch"] for row in logged] == [1, 2] and all("fd_efficientnet_lite0" in row for row in logged)
    for row in logged:  # bits/dim = nats / (D ln 2), D = 3·16·16
        assert row["val_bits_per_dim"] == pytest.approx(row["val_loss"] / (768 * math.log(2)), rel=1e-5)
    assert logged[-1]["train_loss"] < logged[0]["train_loss"] and 3 < logged[-1]["val_bits_per_dim"] < 8.2

    halves = tiny_config(tmp_path / "b", train={"epochs": 1}, model=SMALL, output={"select": "val_loss"})
    assert main(["train", "--config", str(halves)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=2"]) == 0
    a, b = (load_training_state(tmp_path / name / "logs" / "tiny" / "checkpoints" / "last.pt")["model"] for name in "ab")
    assert all(torch.allclose(a[key], b[key], atol=1e-6, rtol=0) for key in a)  # resumed exactly

    best = tmp_path / "a" / "best" / "tiny"
    assert json.loads((best / "metrics.json").read_text())["criterion"] == "fd_efficientnet_lite0"
    model = vaegen.load(best)
    images = model.sample(4, seed=0)
    assert images.shape == (4, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.sample(4, seed=0)) and not torch.equal(images, model.sample(4, seed=1))
    assert torch.equal(model.sample(3, seed=0, temperature=0)[0], model.sample(3, seed=5, temperature=0)[2])

    args = ["--set", "num_samples=16", "--set", "backbone=none", "--set", "batch_size=1000", "--set", "seed=7"]
    assert main(["test", "--checkpoint", str(best), *args]) == 0
    report = json.loads((best / "test" / "metrics.json").read_text())
    assert "nll_iwae_nats" not in report and report["dequantized_likelihood"]["seed"] == 7
    assert report["nll_dequantized_bits_per_dim"] == pytest.approx(report["nll_dequantized_nats"] / (768 * math.log(2)))
    split = load_splits(model.config.data, model.config.train.seed, TEST_SETTINGS).val
    x = to_input(split.images, torch.device("cpu"))
    with torch.no_grad():  # the training terms' formula on the same images and the same noise
        terms = family_of(model.config.model).training_terms(model.model(x, generator=torch.Generator().manual_seed(7)), x, 1.0, model.config.loss)
    assert report["nll_dequantized_bits_per_dim"] == pytest.approx(terms["bits_per_dim"].item(), rel=1e-6)
    assert report["bits_per_dim"] == pytest.approx(report["nll_dequantized_bits_per_dim"], rel=0.01)  # other noise
    assert (best / "test" / "samples.png").is_file()


@pytest.mark.parametrize(("sections", "key"), [
    ({"model": {**SMALL, "flow_scales": 6}}, "model.flow_scales"),  # 16 px does not divide by 2**5
    ({"model": {**SMALL, "conditional": "onehot"}}, "model.conditional"),
    ({"model": SMALL, "sampler": {"name": "gmm"}}, "sampler.name"),
    ({"model": SMALL, "output": {"select": "val_nelbo"}}, "output.select"),
    ({"model": {**SMALL, "flow_width": 0}}, "model.flow_width"),
    ({"model": {**SMALL, "flow_couplings": 0}}, "model.flow_couplings"),
    ({"model": SMALL, "adversarial": {"enabled": True}}, "adversarial.enabled"),
    ({"model": SMALL, "loss": {"perceptual": "efficientnet-lite0"}, "eval": {"backbone": "none"}}, "loss.perceptual"),
])
def test_bad_flow_configs_are_refused_before_training(tmp_path, capsys, tiny_config, sections, key):
    sections = {"output": {"select": "val_loss"}, **sections}
    config = tiny_config(tmp_path, **sections)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "logs" / "tiny" / "checkpoints").exists()


def test_the_shipped_config_trains_a_flow_selected_by_fd():
    config = load_config(REPO / "configs" / "train_apples_realnvp.yaml")
    family_of(config.model).check(config)
    assert (config.model.name, config.output.select, config.eval.backbone) == ("realnvp", "fid", "efficientnet-lite0")
    assert config.data.image_size == (32, 32) and config.model.flow_scales == 3
