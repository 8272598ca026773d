"""The GRU-encoder VAE (model.name: gru_vae): ConvVAE's decoder behind a bidirectional GRU over the image's rows. Its
encoder reads rows, it trains through `vaegen train`, resumes exactly, tests and loads like any VAE."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import checkpoint_weights

import vaegen
from vaegen.apps.cli import main
from vaegen.config import config_from_dict
from vaegen.models import build_model, family_of
from vaegen.models.vae import ConvVAE, RowGRU

GRU = {"name": "gru_vae", "latent_dim": 8, "widths": [8, 16], "rnn_hidden": 12}


@pytest.mark.parametrize("conditional", ["none", "onehot", "embedding"])
def test_the_encoder_is_a_gru_over_rows_and_the_decoder_convvaes(conditional):
    config = config_from_dict({"data": {"root": "unused", "image_size": [16, 32]}, "model": {**GRU, "conditional": conditional}})
    model = build_model(config.model, (16, 32), 3, 3).eval()
    x, y = torch.rand(4, 3, 16, 32), (torch.tensor([0, 1, 2, 0]) if conditional != "none" else None)
    logits, mu, logvar = model(x, y)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (4, 8)
    assert isinstance(model.encoder, RowGRU) and model.encoder.gru.bidirectional and model.to_mu.in_features == 24
    reference = build_model(config.model.model_copy(update={"name": "conv_vae"}), (16, 32), 3, 3)
    assert type(reference) is ConvVAE and model.decoder[-1].weight.shape == reference.decoder[-1].weight.shape
    flipped = model.encode(x.flip(2), y)[0]  # the rows' order is what it reads
    assert not torch.allclose(flipped, model.encode(x, y)[0], atol=1e-4)
    assert family_of(config.model).name == "vae"


def test_a_gru_vae_trains_resumes_exactly_tests_and_loads(tmp_path, tiny_config):
    assert main(["train", "--config", str(tiny_config(tmp_path / "a", model=GRU))]) == 0
    assert main(["train", "--config", str(tiny_config(tmp_path / "b", model=GRU, train={"epochs": 2}))]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=3"]) == 0
    a, b = (checkpoint_weights(tmp_path / name / "logs" / "tiny") for name in "ab")
    assert any(key.startswith("encoder.gru.") for key in a)
    assert all(torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0) for key in a)

    best = tmp_path / "a" / "best" / "tiny"
    model = vaegen.load(best)
    assert torch.equal(model.sample(3, seed=0), model.sample(3, seed=0))
    assert main(["test", "--checkpoint", str(best), "--set", "num_samples=16", "--set", "backbone=none",
                 "--set", "likelihood.samples=4"]) == 0
    report = json.loads((best / "test" / "metrics.json").read_text())
    assert report["nll_iwae_nats"] <= report["nll_elbo_nats"]
