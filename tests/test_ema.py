"""train.ema: the weight average's arithmetic, that it is what evaluates and ships, and exact resume with it."""

from __future__ import annotations

import json

import torch
from helpers import checkpoint_weights
from torch import nn

import vaegen
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.training.ema import EMA


def test_update_is_a_warmed_up_exponential_average():
    live = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(live, decay=0.9)
    start = live[0].weight.detach().clone()
    with torch.no_grad():
        live[0].weight.add_(1.0)
    ema.update(live)  # decay min(0.9, 1/10) = 0.1: mostly the new weights
    assert torch.allclose(ema.module[0].weight, start + 0.9)
    for _ in range(200):
        ema.update(live)
    assert ema.current_decay() == 0.9
    assert torch.allclose(ema.module[0].weight, start + 1.0, atol=1e-6)
    live[1].num_batches_tracked.fill_(7)
    ema.update(live)
    assert ema.module[1].num_batches_tracked.item() == 7
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_the_average_evaluates_ships_and_resumes_exactly(tmp_path, tiny_config):
    straight = tiny_config(tmp_path / "a", train={"epochs": 4, "ema": 0.95})
    assert main(["train", "--config", str(straight)]) == 0
    halves = tiny_config(tmp_path / "b", train={"epochs": 2, "ema": 0.95})
    assert main(["train", "--config", str(halves)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=4"]) == 0

    a, b = tmp_path / "a" / "logs" / "tiny", tmp_path / "b" / "logs" / "tiny"
    state_a, state_b = load_training_state(a / "checkpoints" / "last.pt"), load_training_state(b / "checkpoints" / "last.pt")
    assert state_a["ema"]["updates"] == state_b["ema"]["updates"] == 4 * (240 // 32)
    for key, value in state_a["ema"]["module"].items():
        assert (value.float() - state_b["ema"]["module"][key].float()).abs().max().item() <= 1e-6, key
    weights_a, weights_b = checkpoint_weights(a), checkpoint_weights(b)
    assert max((value.float() - weights_b[key].float()).abs().max().item() for key, value in weights_a.items()) <= 1e-6


def test_the_exported_model_is_the_average(tmp_path, tiny_config):
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 1, "ema": 0.9}))]) == 0
    state = load_training_state(tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt")
    exported = vaegen.load(tmp_path / "best" / "tiny").state_dict()
    assert json.loads((tmp_path / "best" / "tiny" / "metrics.json").read_text())["epoch"] == 1
    assert all(torch.equal(exported[key], value) for key, value in state["ema"]["module"].items())
    assert any(not torch.equal(exported[key], value) for key, value in state["model"].items() if value.is_floating_point())
