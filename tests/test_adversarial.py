"""adversarial.enabled (VAE-GAN): the losses by hand, the adaptive weight, the warm-up, and exact resume with it on."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import checkpoint_weights, metric_rows

from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.config import AdversarialConfig
from vaegen.models.losses import discriminator_loss, generator_loss
from vaegen.training.adversarial import Adversary, PatchDiscriminator


def test_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1.5) / 2))
    assert generator_loss(fake, "hinge").item() == pytest.approx(0.75)
    softplus = lambda v: torch.log1p(torch.exp(torch.tensor(v))).item()  # noqa: E731
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(
        0.5 * ((softplus(-2.0) + softplus(-0.5)) / 2 + (softplus(-2.0) + softplus(0.5)) / 2), rel=1e-6
    )
    assert generator_loss(fake, "non_saturating").item() == pytest.approx((softplus(2.0) + softplus(-0.5)) / 2, rel=1e-6)


def test_patch_discriminator_scores_patches():
    logits = PatchDiscriminator(3, (8, 16, 32))(torch.rand(2, 3, 32, 48))
    assert logits.shape == (2, 1, 4, 6)


def test_generator_term_is_the_gradient_ratio_and_leaves_the_discriminator_alone():
    torch.manual_seed(0)
    adversary = Adversary(AdversarialConfig(enabled=True, weight=0.5, widths=(8, 16)), 3, torch.device("cpu"))
    layer = torch.nn.Conv2d(3, 3, 3, padding=1)
    fake = torch.sigmoid(layer(torch.rand(4, 3, 16, 16)))
    recon = (fake - 0.5).pow(2).sum() / 4
    term = adversary.generator_term(fake, recon, layer.weight)
    g_loss = generator_loss(adversary.discriminator(fake), "hinge")
    recon_norm = torch.autograd.grad(recon, layer.weight, retain_graph=True)[0].norm()
    adv_norm = torch.autograd.grad(g_loss, layer.weight, retain_graph=True)[0].norm()
    assert term.item() == pytest.approx(0.5 * (recon_norm / (adv_norm + 1e-4)).item() * g_loss.item(), rel=1e-5)
    term.backward()
    assert all(p.grad is None for p in adversary.discriminator.parameters())
    assert layer.weight.grad is not None

    before = [p.detach().clone() for p in adversary.discriminator.parameters()]
    adversary.discriminator_step(torch.rand(4, 3, 16, 16), fake)
    assert any(not torch.equal(a, b) for a, b in zip(before, adversary.discriminator.parameters()))
    stats = adversary.epoch_stats()
    assert set(stats) == {"train_adv_g", "train_adv_d", "adv_weight"} and stats["adv_weight"] > 0
    assert adversary.epoch_stats() == {}  # read once per epoch


def test_warm_up_then_exact_resume_with_the_discriminator(tmp_path, tiny_config):
    adversarial = {"enabled": True, "start_epoch": 2, "widths": [8, 16], "loss": "non_saturating"}
    straight = tiny_config(tmp_path / "a", train={"epochs": 4}, adversarial=adversarial)
    assert main(["train", "--config", str(straight)]) == 0
    halves = tiny_config(tmp_path / "b", train={"epochs": 3}, adversarial=adversarial)
    assert main(["train", "--config", str(halves)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=4"]) == 0

    a, b = tmp_path / "a" / "logs" / "tiny", tmp_path / "b" / "logs" / "tiny"
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert "adv_weight" not in rows[0] and all("adv_weight" in row for row in rows[1:])  # epoch 1 is the warm-up
    weights_a, weights_b = checkpoint_weights(a), checkpoint_weights(b)
    assert max((value.float() - weights_b[key].float()).abs().max().item() for key, value in weights_a.items()) <= 1e-6
    d_a = load_training_state(a / "checkpoints" / "last.pt")["adversary"]
    d_b = load_training_state(b / "checkpoints" / "last.pt")["adversary"]
    for key, value in d_a["discriminator"].items():
        assert (value - d_b["discriminator"][key]).abs().max().item() <= 1e-6, key
    assert d_a["optimizer"]["state"][0]["step"] == d_b["optimizer"]["state"][0]["step"] == 3 * (240 // 32)
    rows_a, rows_b = metric_rows(a), metric_rows(b)
    # b's epoch 3 ended its first half, so it was evaluated: reconstruction scores a's epoch 3 does not have
    assert rows_b[2].keys() - rows_a[2].keys() == {"val_ssim", "val_psnr"}
    rows_b = [{key: value for key, value in row.items() if key in row_a} for row_a, row in zip(rows_a, rows_b)]
    assert rows_a == [pytest.approx(row, rel=1e-5, abs=1e-6) for row in rows_b]
