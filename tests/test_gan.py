"""The GAN family (model.name: dcgan): its networks per loss and conditioning, the four losses and WGAN-GP's penalty,
the two-player step (each update moves only its player), the signs of failure the log names, and tiny runs through
`vaegen train` (selected by FD, resumed exactly), `vaegen test` and `vaegen.load`; bad configs are refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import vaegen
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.config import config_from_dict, load_config
from vaegen.models import build_model, family_of
from vaegen.models.gan import gradient_penalty
from vaegen.models.losses import discriminator_loss, generator_loss
from vaegen.training.accel import resolve_step_options
from vaegen.training.loop import game_step
from vaegen.training.run import build_run

SMALL = {"name": "dcgan", "latent_dim": 8, "widths": [8, 16]}
EVAL = {"every": 1, "backbone": "efficientnet-lite0", "num_samples": 20, "batch_size": 10, "kid_subset_size": 10}


def gan_config(**model):
    config = config_from_dict({"data": {"root": "unused", "image_size": [16, 32]}, "model": {**SMALL, **model},
                               "output": {"select": "fid"}})
    family_of(config.model).check(config)  # refused as the training loop would refuse it
    return config


@pytest.mark.parametrize("conditional", ["none", "onehot", "embedding"])
def test_the_generator_makes_images_of_the_data_size_and_draws_only_from_its_generator(conditional):
    model = build_model(gan_config(conditional=conditional).model, (16, 32), channels=3, num_classes=3).eval()
    images = model.generate(5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 3, 16, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.generate(5, torch.Generator().manual_seed(0)))
    assert not torch.equal(images, model.generate(5, torch.Generator().manual_seed(1)))
    y = torch.tensor([0, 1, 2, 0, 1])
    logits = model(torch.rand(5, 3, 16, 32), y if conditional != "none" else None)
    assert logits.shape == (5,) and model.is_conditional == (conditional != "none")
    if conditional != "none":  # the class changes the images drawn from the same codes, and the discriminator's logits
        same = model.generate(5, torch.Generator().manual_seed(0), labels=torch.zeros(5, dtype=torch.long))
        other = model.generate(5, torch.Generator().manual_seed(0), labels=torch.ones(5, dtype=torch.long))
        assert not torch.allclose(same, other)
        x = torch.rand(5, 3, 16, 32)
        assert not torch.allclose(model(x, torch.zeros(5, dtype=torch.long)), model(x, torch.ones(5, dtype=torch.long)))
    one_class = torch.zeros(3, dtype=torch.long) if conditional != "none" else None
    assert model.generate(3, torch.Generator().manual_seed(0), temperature=0.0, labels=one_class).std(0).max() == 0  # z = 0


@pytest.mark.parametrize(("settings", "norms"), [
    ({}, {"BatchNorm2d"}), ({"gan_loss": "wgan_gp"}, set()), ({"spectral_norm": True}, {"spectral"}),
])
def test_the_critic_has_batchnorm_only_where_its_loss_allows(settings, norms):
    model = build_model(gan_config(**settings).model, (16, 16), channels=3, num_classes=1)
    found = {type(layer).__name__ for layer in model.discriminator.modules() if isinstance(layer, nn.BatchNorm2d)}
    if any("parametrizations" in name for name, _ in model.discriminator.named_parameters()):
        found.add("spectral")
    assert found == norms


def test_the_losses_have_their_published_values():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(0.5 * ((1 + 1) / 2 + (1 + 1) / 2))
    assert generator_loss(fake, "lsgan").item() == pytest.approx(0.5 * (4 + 0) / 2)
    assert discriminator_loss(real, fake, "wgan_gp").item() == pytest.approx(0.0 - 1.0)  # E[D(fake)] - E[D(real)]
    assert generator_loss(fake, "wgan_gp").item() == pytest.approx(0.0)


def test_the_gradient_penalty_is_the_squared_distance_of_the_critics_gradient_norm_from_one():
    model = build_model(gan_config(gan_loss="wgan_gp").model, (16, 16), channels=1, num_classes=1)
    weights = torch.full((1, 256), 0.25)  # a linear critic: its gradient is w everywhere, ‖w‖ = 4

    class Linear(nn.Module):
        def forward(self, images, labels):
            return (images.flatten(1) * weights).sum(1)

    model.discriminator = Linear()
    real, fake, mix = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16), torch.rand(4, 1, 1, 1)
    assert gradient_penalty(model, real, fake, None, mix).item() == pytest.approx((4.0 - 1.0) ** 2, rel=1e-5)


def test_each_update_of_the_game_moves_only_its_player(tiny_config, tmp_path):
    config = load_config(tiny_config(tmp_path, model={**SMALL, "critic_steps": 2}, output={"select": "fid"}, eval=EVAL))
    device = torch.device("cpu")
    run = build_run(config, device, resolve_step_options(config.train, config.data, device, 0), ["a"])
    critic, generator = run.family.players(run.model)
    before = [{name: value.detach().clone() for name, value in part.named_parameters()} for part in (critic, generator)]
    x = torch.rand(8, 3, 16, 16)
    terms = game_step(run, x, None, step=1)  # a critic's turn only
    assert terms.shape == (len(run.family.terms) + 1,) and torch.isfinite(terms).all()
    assert _changed(critic, before[0]) and not _changed(generator, before[1])
    critic_after = {name: value.detach().clone() for name, value in critic.named_parameters()}
    game_step(run, x, None, step=2)  # the critic's, then the generator's
    assert _changed(generator, before[1]) and _changed(critic, critic_after)


def _changed(part: nn.Module, before: dict) -> bool:
    """Whether a weight of `part` differs from `before` (BatchNorm's running statistics move with every forward)."""
    return any(not torch.equal(value, before[name]) for name, value in part.named_parameters())


def test_a_won_discriminator_and_a_collapse_are_named_and_a_new_generator_is_not_called_collapsed():
    family = family_of(gan_config(collapse_patience=2).model)
    healthy = {"train_loss": 0.5, "val_diversity": 0.8}
    assert family.trouble([healthy, healthy, healthy]) is None
    assert "discriminator has won" in family.trouble([healthy, {"train_loss": 1e-4}, {"train_loss": 1e-4}])
    starting = [{"train_loss": 0.5, "val_diversity": 0.05}] * 3  # an untrained generator's images barely differ
    assert family.trouble(starting) is None
    collapsed = family.trouble([healthy, {"train_loss": 0.5, "val_diversity": 0.05}, {"train_loss": 0.5, "val_diversity": 0.1}])
    assert "mode collapse" in collapsed and "val_diversity" in collapsed
    wgan = family_of(gan_config(gan_loss="wgan_gp", collapse_patience=2).model)
    assert wgan.trouble([healthy, {"train_loss": -3.0}, {"train_loss": -3.0}]) is None  # a critic's loss is negative


def test_a_conditional_wgan_gp_trains_is_selected_by_fd_tested_and_loaded(tmp_path, tiny_config):
    model = {**SMALL, "gan_loss": "wgan_gp", "critic_steps": 2, "conditional": "embedding"}
    config = tiny_config(tmp_path, model=model, eval=EVAL, train={"epochs": 2, "ema": 0.9}, output={"select": "fid"})
    assert main(["train", "--config", str(config)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row[key]) for row in rows for key in
               ("train_loss", "train_g_loss", "train_wasserstein", "train_gradient_penalty", "val_diversity", "fd_efficientnet_lite0"))
    best = tmp_path / "best" / "tiny"
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["criterion"] == "fd_efficientnet_lite0"
    assert metrics["value"] == min(row["fd_efficientnet_lite0"] for row in rows)
    loaded = vaegen.load(best)
    images = loaded.sample(4, seed=3, labels=[0, 1, 2, 0])
    assert images.shape == (4, 3, 16, 16) and torch.equal(images, loaded.sample(4, seed=3, labels=[0, 1, 2, 0]))
    assert main(["test", "--checkpoint", str(best), "--set", "num_samples=20", "--set", "grid=2"]) == 0
    tested = json.loads((best / "test" / "metrics.json").read_text())
    assert tested["fd_efficientnet_lite0"] > 0 and 0 < tested["diversity"]


def test_a_resumed_gan_ends_with_the_uninterrupted_runs_weights(tmp_path, tiny_config):
    model = {**SMALL, "critic_steps": 2}
    settings = {"model": model, "eval": EVAL, "output": {"select": "fid"}}
    whole = tiny_config(tmp_path / "whole", train={"epochs": 2, "ema": 0.9}, **settings)
    assert main(["train", "--config", str(whole)]) == 0
    part = tiny_config(tmp_path / "part", train={"epochs": 1, "ema": 0.9}, **settings)
    assert main(["train", "--config", str(part)]) == 0
    assert main(["train", "--resume", str(tmp_path / "part" / "logs" / "tiny"), "--set", "train.epochs=2"]) == 0
    a, b = (load_training_state(tmp_path / run / "logs" / "tiny" / "checkpoints" / "last.pt") for run in ("whole", "part"))
    for part_name in ("model", "ema"):
        state_a, state_b = a[part_name] if part_name == "model" else a["ema"]["module"], b[part_name] if part_name == "model" else b["ema"]["module"]
        for name, value in state_a.items():
            assert torch.allclose(value.float(), state_b[name].float(), atol=1e-6), name


@pytest.mark.parametrize(("sections", "key"), [
    ({"sampler": {"name": "gmm"}}, "sampler.name"),
    ({"output": {"select": "val_loss"}}, "output.select"),
    ({"optim": {"lr": 1e-3, "skip_grad_norm": 100.0}}, "optim.skip_grad_norm"),
    ({"train": {"compile": True}}, "train.compile"),
    ({"data": {"image_size": 18}}, "data.image_size"),
    ({"loss": {"perceptual": "efficientnet-lite0"}}, "loss.perceptual"),
    ({"adversarial": {"enabled": True}}, "adversarial.enabled"),
])
def test_settings_a_gan_cannot_train_with_are_refused_before_training(tmp_path, tiny_config, capsys, sections, key):
    settings = {"output": {"select": "fid"}, "eval": EVAL, **sections}
    if "output" in sections:
        settings["output"] = sections["output"]
    config = tiny_config(tmp_path, model=SMALL, **settings)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt").exists()


def test_the_trouble_a_family_sees_is_written_to_the_log(tmp_path, tiny_config, monkeypatch):
    seen = []

    def trouble(self, history):
        seen.append([row["epoch"] for row in history])
        return "the discriminator has won" if len(history) == 2 else None

    monkeypatch.setattr(type(family_of(gan_config().model)), "trouble", trouble)
    config = tiny_config(tmp_path, model=SMALL, eval={**EVAL, "every": 2}, train={"epochs": 2}, output={"select": "fid"})
    assert main(["train", "--config", str(config)]) == 0
    assert seen == [[1], [1, 2]]  # every epoch's row, oldest first
    log = (tmp_path / "logs" / "tiny" / "train.log").read_text()
    assert "epoch 2: the discriminator has won" in log and "epoch 1:" not in log
