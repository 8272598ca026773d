"""The VQ-VAE family (model.name: conv_vqvae): its module's shapes, its codebook terms, and a tiny run through
`vaegen train` (resumed exactly), `vaegen test` and `vaegen.load`; bad configs are refused before training."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vaegen
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.config import config_from_dict
from vaegen.errors import ConfigError
from vaegen.models import build_model, family_of
from vaegen.models.vqvae import code_statistics


def vq_config(**model):
    return config_from_dict({
        "data": {"root": "unused", "image_size": [16, 32]},
        "model": {"name": "conv_vqvae", "widths": [8, 16], "codebook_size": 16, "code_dim": 4, **model},
        "sampler": {"name": "gmm"},
    })


@pytest.mark.parametrize("conditional", ["none", "onehot", "embedding"])
def test_the_module_makes_a_grid_of_codes_and_decodes_it(conditional):
    config = vq_config(conditional=conditional)
    model = build_model(config.model, (16, 32), channels=3, num_classes=3)
    x, y = torch.rand(5, 3, 16, 32), torch.tensor([0, 1, 2, 0, 1])
    labels = y if conditional != "none" else None
    logits, commit, indices, codebook_size = model(x, labels)
    assert logits.shape == x.shape and commit.shape == () and indices.shape == (5, 4, 8) and codebook_size == 16
    assert model.latent_dim == 4 * 4 * 8 and model.is_conditional == (conditional != "none")
    model.eval()
    z, spread = model.encode(x, labels)
    assert z.shape == (5, model.latent_dim) and spread is None
    assert torch.equal(model.codes(x, labels), model(x, labels)[2])  # decode snaps to the codes the forward pass used
    assert torch.allclose(model.reconstruct(x, labels), torch.sigmoid(model(x, labels)[0]), atol=1e-6)
    assert model.decode(z + 1e-4, labels).shape == x.shape
    with pytest.raises(ValueError, match="no prior"):
        model.generate(2, torch.Generator())


def test_codebook_statistics_count_the_codes_a_batch_uses():
    perplexity, usage = code_statistics(torch.tensor([[0, 1], [2, 3]]), codebook_size=8)
    assert perplexity.item() == pytest.approx(4.0) and usage.item() == 0.5  # four codes, equally often, of eight
    perplexity, usage = code_statistics(torch.tensor([5, 5, 5, 5]), codebook_size=8)
    assert perplexity.item() == pytest.approx(1.0) and usage.item() == 1 / 8
    perplexity, _ = code_statistics(torch.tensor([0, 0, 0, 1]), codebook_size=2)
    assert perplexity.item() == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_the_training_terms_are_the_reconstruction_plus_the_commitment_on_the_device():
    config = vq_config(commitment_weight=0.5)
    model = build_model(config.model, (16, 32), channels=3, num_classes=1)
    x = torch.rand(4, 3, 16, 32)
    terms = family_of(config.model).training_terms(model(x), x, 0.7, config.loss)
    assert list(terms) == list(family_of(config.model).terms)
    assert all(isinstance(value, torch.Tensor) and value.shape == () for value in terms.values())
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + terms["commit"].item(), rel=1e-6)  # no β
    assert terms["commit"].item() > 0 and 1 <= terms["perplexity"].item() <= 16 and 0 < terms["codebook_usage"].item() <= 1
    terms["loss"].backward()
    assert model.encoder[0][0].weight.grad.abs().sum() > 0  # the straight-through estimator reaches the encoder


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_vqvae_trains_resumes_exactly_tests_and_loads(tmp_path, tiny_config):
    settings = {"model": {"name": "conv_vqvae", "codebook_size": 32, "code_dim": 4}, "sampler": {"name": "gmm", "components": 2},
                "output": {"select": "val_recon"}}
    straight = tiny_config(tmp_path / "a", train={"epochs": 3}, **settings)
    assert main(["train", "--config", str(straight)]) == 0
    logged = rows(tmp_path / "a" / "logs" / "tiny")
    assert [row["epoch"] for row in logged] == [1, 2, 3]
    assert logged[-1]["train_recon"] < logged[0]["train_recon"] and "val_recon" in logged[-1]
    assert all(row["train_commit"] > 0 and 1 <= row["train_perplexity"] <= 32 and 0 < row["train_codebook_usage"] <= 1
               for row in logged)
    assert not any("train_kl" in row for row in logged)

    halves = tiny_config(tmp_path / "b", train={"epochs": 2}, **settings)
    assert main(["train", "--config", str(halves)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=3"]) == 0
    a, b = (load_training_state(tmp_path / name / "logs" / "tiny" / "checkpoints" / "last.pt")["model"] for name in "ab")
    assert any(key.startswith("quantizer.") for key in a)  # the codebook and its EMA statistics are in the state
    assert all(torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0) for key in a)  # resumed exactly

    best = tmp_path / "a" / "best" / "tiny"
    assert (best / "sampler.safetensors").is_file()
    model = vaegen.load(best)
    images = model.sample(4, seed=0)
    assert images.shape == (4, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.sample(4, seed=0))
    assert main(["test", "--checkpoint", str(best), "--set", "num_samples=16", "--set", "backbone=none"]) == 0
    assert {"samples.png", "reconstructions.png", "interpolation.png", "metrics.json"} <= {path.name for path in (best / "test").iterdir()}
    report = json.loads((best / "test" / "metrics.json").read_text())
    assert report["recon"] == pytest.approx(json.loads((best / "metrics.json").read_text())["metrics"]["val_recon"], rel=1e-5)


@pytest.mark.parametrize(("model", "sampler", "key"), [
    ({"codebook_size": 1}, {"name": "gmm"}, "model.codebook_size"),
    ({"code_dim": 0}, {"name": "gmm"}, "model.code_dim"),
    ({"commitment_weight": -1}, {"name": "gmm"}, "model.commitment_weight"),
    ({"widths": [8, 16, 32, 64, 128]}, {"name": "gmm"}, "data.image_size"),  # 16 px cannot be halved five times
    ({}, {"name": "prior"}, "sampler.name: gmm"),
    ({}, {"name": "gmm"}, "output.select is val_nelbo"),
])
def test_bad_vqvae_configs_are_refused_before_training(tmp_path, capsys, tiny_config, model, sampler, key):
    select = "val_nelbo" if "val_nelbo" in key else "val_recon"
    config = tiny_config(tmp_path, model={"name": "conv_vqvae", **model}, sampler=sampler, output={"select": select})
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "logs" / "tiny" / "checkpoints").exists()


def test_the_family_check_raises_a_config_error():
    config = vq_config().model_copy(update={"sampler": vq_config().sampler.model_copy(update={"name": "prior"})})
    with pytest.raises(ConfigError, match="sampler.name: gmm"):
        family_of(config.model).check(config)


def test_a_conditional_vqvae_samples_each_class_from_its_own_mixture(tmp_path, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 2}, model={"name": "conv_vqvae", "codebook_size": 32, "code_dim": 4,
                         "conditional": "embedding"}, sampler={"name": "gmm", "components": 2}, output={"select": "val_loss"})
    assert main(["train", "--config", str(config)]) == 0
    model = vaegen.load(tmp_path / "best" / "tiny")
    assert model.sampler.groups == 3  # one mixture per class
    red, golden = model.sample(4, labels="Red", seed=0), model.sample(4, labels="Golden", seed=0)
    assert red.shape == golden.shape == (4, 3, 16, 16) and not torch.equal(red, golden)
