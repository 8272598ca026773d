"""The hierarchical VAE (model.name: hvae): its module's shapes and codes, its per-level KL terms and free bits, its
per-level temperatures, and a tiny run through `vaegen train` (resumed exactly), `vaegen test` (IWAE bound and ELBO)
and `vaegen.load`; bad configs are refused before training."""

from __future__ import annotations

import json

import pytest
import torch

import vaegen
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.config import config_from_dict
from vaegen.models import build_model, family_of

SMALL = {"name": "hvae", "widths": [8, 16], "blocks": 1, "latent_channels": 4}


def hvae_config(**model):
    config = config_from_dict({"data": {"root": "unused", "image_size": [16, 32]}, "model": {**SMALL, **model}})
    family_of(config.model).check(config)  # refused as the training loop would refuse it
    return config


@pytest.mark.parametrize("conditional", ["none", "onehot", "embedding"])
def test_the_module_draws_a_grid_per_level_and_decodes_its_codes(conditional):
    config = hvae_config(conditional=conditional)
    model = build_model(config.model, (16, 32), channels=3, num_classes=3)
    x, y = torch.rand(5, 3, 16, 32), torch.tensor([0, 1, 2, 0, 1])
    labels = y if conditional != "none" else None
    logits, kls = model(x, labels)
    assert logits.shape == x.shape and kls.shape == (5, 2) and (kls >= 0).all()
    assert model.latent_dim == 4 * (4 * 8 + 8 * 16)  # level 0 at 16/4 x 32/4, level 1 at twice that
    assert model.is_conditional == (conditional != "none") and model.last_layer.shape == (8, 3, 4, 4)
    model.eval()
    mu, logvar = model.encode(x, labels)
    assert mu.shape == logvar.shape == (5, model.latent_dim)
    assert torch.allclose(model.decode(mu, labels), model.reconstruct(x, labels), atol=1e-6)  # the codes are the posterior means
    images = model.generate(4, torch.Generator().manual_seed(0))
    assert images.shape == (4, 3, 16, 32) and 0 <= images.min() and images.max() <= 1


def test_the_terms_are_the_reconstruction_plus_each_levels_kl_and_free_bits_raise_only_the_loss():
    config = hvae_config(widths=[8, 16, 32], levels=3)
    model = build_model(config.model, (16, 32), channels=3, num_classes=1)
    family, x = family_of(config.model), torch.rand(4, 3, 16, 32)
    outputs = model(x, generator=torch.Generator().manual_seed(0))
    terms = family.training_terms(outputs, x, 0.5, config.loss)
    assert list(terms) == list(family.terms) == ["loss", "recon", "kl", "nelbo", "kl_level0", "kl_level1", "kl_level2"]
    assert all(isinstance(value, torch.Tensor) and value.shape == () for value in terms.values())
    levels = [terms[f"kl_level{level}"].item() for level in range(3)]
    assert all(kl > 0 for kl in levels) and terms["kl"].item() == pytest.approx(sum(levels), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + 0.5 * terms["kl"].item(), rel=1e-6)
    assert terms["nelbo"].item() == pytest.approx(terms["recon"].item() + terms["kl"].item(), rel=1e-6)
    terms["loss"].backward()
    assert model.encoder[0][0][0].weight.grad.abs().sum() > 0  # the reparameterised draws reach the encoder

    floor = max(levels) + 100.0  # above every level's KL: each costs the floor
    floored = family_of(hvae_config(widths=[8, 16, 32], levels=3, free_bits=floor).model).training_terms(outputs, x, 0.5, config.loss)
    assert floored["kl"].item() == pytest.approx(terms["kl"].item())  # the logged KL is the true one
    assert floored["loss"].item() == pytest.approx(terms["recon"].item() + 0.5 * 3 * floor, rel=1e-6)


def test_the_log_weights_average_to_the_elbo_and_do_not_depend_on_the_batch_size():
    config = config_from_dict({"data": {"root": "unused", "image_size": [16, 32]}, "model": SMALL, "loss": {"recon": "bce"}})
    family = family_of(config.model)
    family.check(config)
    torch.manual_seed(0)
    model = build_model(config.model, (16, 32), channels=3, num_classes=1).eval()
    with torch.no_grad():  # posteriors well away from the priors: a KL of about 100 nats
        for level in model.levels:
            level.posterior.weight.normal_(0, 0.2)
    x = torch.rand(5, 3, 16, 32)
    decoder = family.decoder_likelihood(model, [], config.loss, torch.Generator())
    weights = family.log_weights(model, x, None, 64, torch.Generator().manual_seed(0), decoder, batch_size=10)
    assert weights.shape == (64, 5)
    again = family.log_weights(model, x, None, 64, torch.Generator().manual_seed(0), decoder, batch_size=1000)
    assert torch.allclose(weights, again, atol=1e-3)  # the same draws, decoded two at a time or all at once
    with torch.no_grad():  # E_q[-log w] = E_q[-log p(x | z)] + KL: the nelbo the training terms report
        terms = [family.training_terms(model(x, generator=torch.Generator().manual_seed(seed)), x, 1.0, config.loss)
                 for seed in range(16)]
    nelbo, kl = (torch.stack([step[name] for step in terms]).mean().item() for name in ("nelbo", "kl"))
    assert kl > 50 and abs(-weights.mean().item() - nelbo) < 0.05 * kl


def test_level_temperatures_scale_each_levels_draws():
    def samples(temperatures, seed):
        config = hvae_config(level_temperatures=temperatures)
        torch.manual_seed(0)
        model = build_model(config.model, (16, 32), channels=3, num_classes=1).eval()
        with torch.no_grad():  # a prior that depends on the state, as a trained one does
            for level in model.levels:
                level.prior.weight.normal_(0, 0.1)
        return model.generate(3, torch.Generator().manual_seed(seed))

    assert torch.equal(samples([0.0, 0.0], 0), samples([0.0, 0.0], 1))  # every level at its prior's mean
    assert not torch.equal(samples([0.0, 1.0], 0), samples([0.0, 1.0], 1))  # the lower level still draws
    assert not torch.equal(samples([1.0, 0.0], 0), samples([1.0, 0.0], 1))
    assert not torch.equal(samples([1.0, 0.0], 0), samples([0.0, 1.0], 0))


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_hvae_trains_resumes_exactly_tests_and_loads(tmp_path, tiny_config):
    settings = {"model": SMALL, "loss": {"recon": "gaussian"}}
    straight = tiny_config(tmp_path / "a", train={"epochs": 3}, **settings)
    assert main(["train", "--config", str(straight)]) == 0
    logged = rows(tmp_path / "a" / "logs" / "tiny")
    assert [row["epoch"] for row in logged] == [1, 2, 3]
    assert logged[-1]["train_nelbo"] < logged[0]["train_nelbo"] and "val_mse" in logged[-1]
    for row in logged:  # each level's KL is logged, and they add up to the KL
        assert row["train_kl"] == pytest.approx(row["train_kl_level0"] + row["train_kl_level1"], rel=1e-4)
        assert row["val_kl"] == pytest.approx(row["val_kl_level0"] + row["val_kl_level1"], rel=1e-4)
    assert (tmp_path / "a" / "logs" / "tiny" / "samples_epoch0002.png").is_file()  # decoded from the prior's codes

    halves = tiny_config(tmp_path / "b", train={"epochs": 2}, **settings)
    assert main(["train", "--config", str(halves)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=3"]) == 0
    a, b = (load_training_state(tmp_path / name / "logs" / "tiny" / "checkpoints" / "last.pt")["model"] for name in "ab")
    assert any(key.startswith("levels.1.posterior") for key in a)
    assert all(torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0) for key in a)  # resumed exactly

    best = tmp_path / "a" / "best" / "tiny"
    model = vaegen.load(best)
    images = model.sample(4, seed=0)
    assert images.shape == (4, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.sample(4, seed=0)) and not torch.equal(images, model.sample(4, seed=1))
    assert torch.allclose(images, model.model.generate(4, torch.Generator().manual_seed(0)), atol=1e-6)  # ancestral sampling
    model.model.level_temperatures = [0.0, 0.0]  # what model.level_temperatures sets: sample() draws through them
    assert torch.equal(model.sample(2, seed=0), model.sample(2, seed=1))

    args = ["--set", "num_samples=16", "--set", "backbone=none", "--set", "likelihood.samples=8"]
    assert main(["test", "--checkpoint", str(best), *args]) == 0
    report = json.loads((best / "test" / "metrics.json").read_text())
    assert report["nll_iwae_nats"] <= report["nll_elbo_nats"]  # the IWAE bound is at least the ELBO
    assert report["likelihood"]["distribution"] == "gaussian" and report["likelihood"]["samples"] == 8
    val_nelbo = json.loads((best / "metrics.json").read_text())["metrics"]["val_nelbo"]
    assert report["nelbo"] == pytest.approx(val_nelbo, rel=1e-5)  # as training measured it
    assert {"samples.png", "reconstructions.png", "interpolation.png", "traversals.png"} <= {path.name for path in (best / "test").iterdir()}


@pytest.mark.parametrize(("model", "key"), [
    ({"levels": 3}, "model.levels"),  # widths [8, 16]: two stages, two resolutions for levels
    ({"levels": 1}, "model.levels"),
    ({"level_temperatures": [1.0]}, "model.level_temperatures"),
    ({"level_temperatures": [1.0, -0.5]}, "model.level_temperatures"),
    ({"free_bits": -1.0}, "model.free_bits"),
    ({"latent_channels": 0}, "model.latent_channels"),
])
def test_bad_hvae_configs_are_refused_before_training(tmp_path, capsys, tiny_config, model, key):
    config = tiny_config(tmp_path, model={**SMALL, **model})
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "logs" / "tiny" / "checkpoints").exists()


def test_a_conditional_hvae_samples_each_class(tmp_path, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 2}, model={**SMALL, "conditional": "onehot"}, output={"select": "val_loss"})
    assert main(["train", "--config", str(config)]) == 0
    model = vaegen.load(tmp_path / "best" / "tiny")
    red, golden = model.sample(4, labels="Red", seed=0), model.sample(4, labels="Golden", seed=0)
    assert red.shape == golden.shape == (4, 3, 16, 16) and not torch.equal(red, golden)
    own = [model.model.generate(4, torch.Generator().manual_seed(0), class_weights=torch.eye(3)[k]) for k in (0, 2)]
    assert not torch.equal(*own)
