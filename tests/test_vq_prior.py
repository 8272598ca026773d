"""The VQ-VAE's learned prior (model.name: vq_prior): a causal transformer over a frozen conv_vqvae's codes. Its module
is causal and samples from its generator alone; a run copies and loads its first stage, never changes it, resumes
exactly, tests and loads without the first stage's folder; conditional priors sample the class asked for; bad
configs are refused before training."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import checkpoint_weights, metric_rows, sample_subset
from safetensors.torch import load_file

import vaegen
from vaegen.apps.cli import main
from vaegen.config import config_from_dict
from vaegen.errors import ConfigError
from vaegen.models import build_model, family_of

VQ = {"name": "conv_vqvae", "codebook_size": 32, "code_dim": 4}
PRIOR = {"name": "vq_prior", "prior_layers": 2, "prior_width": 32, "prior_heads": 2, "prior_dropout": 0.1}


def prior_config(**model):
    return config_from_dict({"data": {"root": "unused", "image_size": 16},
                             "model": {**PRIOR, "widths": [8, 16], "codebook_size": 16, "code_dim": 4, **model}})


def first_stage(folder, tiny_config, conditional="none", root=None):
    """Trains a tiny conv_vqvae under folder; returns its best-model folder."""
    data = {"root": str(root)} if root else {}
    config = tiny_config(folder, train={"epochs": 2}, model={**VQ, "conditional": conditional}, data=data,
                         sampler={"name": "gmm", "components": 2}, output={"select": "val_recon", "run_name": "vq"})
    assert main(["train", "--config", str(config)]) == 0
    return folder / "best" / "vq"


@pytest.fixture(scope="module")
def trained_vq(tmp_path_factory, tiny_config):
    return first_stage(tmp_path_factory.mktemp("vq"), tiny_config)


def prior_run(folder, tiny_config, stage, epochs=3, **sections):
    model = {**PRIOR, "first_stage": str(stage), **sections.pop("model", {})}
    return tiny_config(folder, train={"epochs": epochs}, model=model, output={"select": "val_loss"}, **sections)


def test_the_prior_is_causal_and_samples_from_its_generator_alone():
    model = build_model(prior_config().model, (16, 16), 3, 1).eval()
    tokens = torch.randint(0, 16, (2, 16))
    later = tokens.clone()
    later[:, 9:] = (later[:, 9:] + 1) % 16  # a change at position 9 and after
    same = model._logits(tokens)[:, :9], model._logits(later)[:, :9]
    assert torch.allclose(*same, atol=1e-6)  # position t sees tokens up to t only
    assert not torch.allclose(model._logits(tokens)[:, 9], model._logits(later)[:, 9])
    caches = [{} for _ in model.blocks]  # sampling's key/value cache, one position at a time, agrees with one pass
    stepwise = torch.cat([model._logits(tokens[:, i:i + 1], i, caches) for i in range(16)], dim=1)
    assert torch.allclose(stepwise, model._logits(tokens), atol=1e-5)
    draw = model.generate(3, torch.Generator().manual_seed(0))
    assert draw.shape == (3, 3, 16, 16) and 0 <= draw.min() and draw.max() <= 1
    assert torch.equal(draw, model.generate(3, torch.Generator().manual_seed(0)))
    assert not torch.equal(draw, model.generate(3, torch.Generator().manual_seed(1)))
    coldest = [model.generate(2, torch.Generator().manual_seed(seed), temperature=0) for seed in (0, 1)]
    assert torch.equal(*coldest)  # temperature 0: the most likely code everywhere, whatever the seed
    greedy = build_model(prior_config(top_k=1).model, (16, 16), 3, 1).eval()
    greedy.load_state_dict(model.state_dict())
    assert torch.equal(greedy.generate(2, torch.Generator().manual_seed(5)), coldest[0])  # top-1 is greedy


def test_the_objective_is_the_codes_cross_entropy_and_reaches_only_the_prior():
    config = prior_config()
    model, family = build_model(config.model, (16, 16), 3, 1).train(), family_of(config.model)
    assert not model.first_stage.training  # frozen: BatchNorm statistics and the codebook EMA stay the first stage's
    x = torch.rand(4, 3, 16, 16)
    logits, codes = model(x)
    assert logits.shape == (4, 16, 16) and codes.shape == (4, 16)
    terms = family.training_terms((logits, codes), x, 1.0, config.loss)
    assert list(terms) == list(family.terms)
    assert terms["bits_per_code"].item() == pytest.approx(terms["loss"].item() / 0.6931471805599453, rel=1e-6)
    terms["loss"].backward()
    assert model.head[-1].weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.first_stage.parameters())


def test_a_prior_run_keeps_its_first_stage_resumes_exactly_tests_and_loads_alone(tmp_path, tiny_config, trained_vq):
    stage = tmp_path / "stage"
    shutil.copytree(trained_vq, stage)
    assert main(["train", "--config", str(prior_run(tmp_path / "a", tiny_config, stage))]) == 0
    logged = metric_rows(tmp_path / "a" / "logs" / "tiny")
    assert [row["epoch"] for row in logged] == [1, 2, 3] and logged[-1]["train_loss"] < logged[0]["train_loss"]
    assert "val_bits_per_code" in logged[-1] and not any("train_kl" in row for row in logged)
    best = tmp_path / "a" / "best" / "tiny"
    weights, vq = load_file(str(best / "model.safetensors")), load_file(str(stage / "model.safetensors"))
    assert all(torch.equal(weights[f"first_stage.{key}"], value) for key, value in vq.items())  # never trained

    assert main(["train", "--config", str(prior_run(tmp_path / "b", tiny_config, stage, epochs=2))]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=3"]) == 0
    a, b = (checkpoint_weights(tmp_path / name / "logs" / "tiny") for name in "ab")
    assert all(torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0) for key in a)

    shutil.rmtree(stage)  # the exported model holds its first stage: it loads, samples and tests without it
    model = vaegen.load(best)
    images = model.sample(4, seed=0)
    assert images.shape == (4, 3, 16, 16) and torch.equal(images, model.sample(4, seed=0))
    assert main(["test", "--checkpoint", str(best), "--set", "num_samples=16", "--set", "backbone=none"]) == 0
    report = json.loads((best / "test" / "metrics.json").read_text())
    assert report["bits_per_code"] == pytest.approx(logged[-1]["val_bits_per_code"], rel=1e-5)


def test_a_conditional_prior_learns_each_class_of_a_conditional_first_stage(tmp_path, tiny_config):
    stage = first_stage(tmp_path / "vq", tiny_config, conditional="embedding")
    config = prior_run(tmp_path / "prior", tiny_config, stage, epochs=2)
    assert main(["train", "--config", str(config)]) == 0
    model = vaegen.load(tmp_path / "prior" / "best" / "tiny")
    assert model.config.model.conditional == "embedding" and model.model.is_conditional  # copied from the first stage
    red, golden = model.sample(4, labels="Red", seed=0), model.sample(4, labels="Golden", seed=0)
    assert red.shape == golden.shape == (4, 3, 16, 16) and not torch.equal(red, golden)
    with pytest.raises(ValueError, match="not a class"):
        model.sample(2, labels="Pear")


@pytest.mark.parametrize(("case", "key"), [
    ("no first stage", "model.first_stage"),
    ("missing folder", "model.first_stage"),
    ("not a vqvae", "conv_vqvae"),
    ("other image size", "data.image_size"),
    ("heads", "model.prior_heads"),
    ("sampler", "sampler.name: prior"),
    ("select", "output.select is val_recon"),
])
def test_bad_prior_configs_are_refused_before_training(tmp_path, capsys, tiny_config, trained_vq, case, key):
    model, data, sampler, select = {"first_stage": str(trained_vq)}, {}, {}, "val_loss"
    if case == "no first stage":
        model = {}
    elif case == "missing folder":
        model["first_stage"] = str(tmp_path / "nowhere")
    elif case == "not a vqvae":
        vae = tiny_config(tmp_path / "vae", train={"epochs": 1}, output={"run_name": "vae"})
        assert main(["train", "--config", str(vae)]) == 0
        model["first_stage"] = str(tmp_path / "vae" / "best" / "vae")
    elif case == "other image size":
        data = {"image_size": 32}
    elif case == "heads":
        model["prior_heads"] = 3
    elif case == "sampler":
        sampler = {"name": "gmm"}
    else:
        select = "val_recon"
    config = tiny_config(tmp_path, model={**PRIOR, **model}, data=data, sampler=sampler, output={"select": select})
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "logs" / "tiny" / "checkpoints").exists()


def test_a_conditional_first_stage_must_see_its_own_classes(tmp_path, tiny_config):
    stage = first_stage(tmp_path / "vq", tiny_config, conditional="onehot")
    other = sample_subset(tmp_path / "two", {"Golden": 40, "Red": 40})
    config = prior_run(tmp_path / "prior", tiny_config, stage, epochs=1, data={"root": str(other)})
    assert main(["train", "--config", str(config)]) == 2


def test_the_family_resolves_to_its_first_stage_settings(trained_vq):
    config = config_from_dict({"data": {"root": "unused", "image_size": 16},
                               "model": {**PRIOR, "first_stage": str(trained_vq), "code_dim": 99}})
    resolved = family_of(config.model).resolve(config)
    assert (resolved.model.code_dim, resolved.model.codebook_size, resolved.model.widths) == (4, 32, (8, 16))
    with pytest.raises(ConfigError, match="model.first_stage"):
        family_of(config.model).resolve(prior_config())
