"""The VAE objective: per-image sums averaged over the batch, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vaegen.models.losses import LossTerms, kl_divergence, reconstruction_loss, vae_loss


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_mse_is_summed_squared_error_of_sigmoid_over_batch():
    logits = torch.tensor([[[[0.0, 2.0]]], [[[-1.0, 0.5]]]])  # [2, 1, 1, 2]
    target = torch.tensor([[[[1.0, 0.0]]], [[[0.25, 1.0]]]])
    by_hand = (
        (sigmoid(0.0) - 1.0) ** 2 + (sigmoid(2.0) - 0.0) ** 2
        + (sigmoid(-1.0) - 0.25) ** 2 + (sigmoid(0.5) - 1.0) ** 2
    ) / 2
    value = reconstruction_loss(logits, target, "mse")
    assert value.ndim == 0
    assert value.item() == pytest.approx(by_hand, rel=1e-6)


def test_mse_of_zero_logits_against_half_is_zero():
    assert reconstruction_loss(torch.zeros(3, 3, 4, 4), torch.full((3, 3, 4, 4), 0.5), "mse").item() == 0.0


def test_bce_matches_binary_cross_entropy_of_sigmoid():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 8, 8, generator=gen) * 3
    target = torch.rand(4, 3, 8, 8, generator=gen)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="sum") / 4
    value = reconstruction_loss(logits, target, "bce")
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_by_hand_on_tiny_tensor():
    logits = torch.tensor([[[[1.0]]], [[[-2.0]]]])
    target = torch.tensor([[[[1.0]]], [[[0.3]]]])
    p1, p2 = sigmoid(1.0), sigmoid(-2.0)
    by_hand = (-math.log(p1) - (0.3 * math.log(p2) + 0.7 * math.log(1 - p2))) / 2
    assert reconstruction_loss(logits, target, "bce").item() == pytest.approx(by_hand, rel=1e-6)


def test_reconstruction_is_per_image_sum_averaged_over_batch():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, generator=gen)
    target = torch.rand(1, 3, 4, 4, generator=gen)
    for kind in ("mse", "bce", "gaussian"):
        one = reconstruction_loss(logits, target, kind)
        many = reconstruction_loss(logits.repeat(5, 1, 1, 1), target.repeat(5, 1, 1, 1), kind)
        assert many.item() == pytest.approx(one.item(), rel=1e-5)


def test_unknown_reconstruction_kind_rejected():
    with pytest.raises(ValueError, match="'mse', 'bce' or 'gaussian'"):
        reconstruction_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "l1")


def test_kl_is_zero_for_standard_normal_posterior():
    assert kl_divergence(torch.zeros(4, 16), torch.zeros(4, 16)).item() == 0.0


def test_kl_matches_closed_form():
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(3, 5, generator=gen)
    logvar = torch.randn(3, 5, generator=gen)
    sigma2 = logvar.exp()
    expected = 0.5 * torch.sum(mu**2 + sigma2 - 1 - torch.log(sigma2)) / 3
    value = kl_divergence(mu, logvar)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert value.item() > 0


def test_kl_by_hand_on_tiny_tensor():
    mu = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # per element 0.5 * (mu² + σ² - 1 - log σ²)
    by_hand = 0.5 * ((1 + 1 - 1 - 0) + (0 + 4 - 1 - math.log(4.0)) + 0 + (4 + 1 - 1 - 0)) / 2
    assert kl_divergence(mu, logvar).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("kind", ["mse", "bce", "gaussian"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 4.0])
def test_vae_loss_total_is_recon_plus_beta_kl(kind, beta):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, generator=gen)
    target = torch.rand(2, 3, 4, 4, generator=gen)
    mu = torch.randn(2, 6, generator=gen)
    logvar = torch.randn(2, 6, generator=gen)
    terms = vae_loss(logits, target, mu, logvar, beta, kind)
    assert isinstance(terms, LossTerms)
    assert terms.recon.item() == pytest.approx(reconstruction_loss(logits, target, kind).item())
    assert terms.kl.item() == pytest.approx(kl_divergence(mu, logvar).item())
    assert terms.total.item() == pytest.approx(terms.recon.item() + beta * terms.kl.item(), rel=1e-6)
    assert terms.kl.item() > 0


def test_vae_loss_is_differentiable():
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    mu = torch.randn(2, 3, requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    terms = vae_loss(logits, torch.rand(2, 1, 4, 4), mu, logvar, 1.0, "bce")
    terms.total.backward()
    # d KL / d mu = mu / N for the batch-averaged KL
    assert torch.allclose(mu.grad, mu.detach() / 2)
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_calibrated_gaussian_uses_the_likelihood_maximising_sigma():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 8, 8, generator=gen)
    target = torch.rand(4, 3, 8, 8, generator=gen)
    mean = torch.sigmoid(logits)
    mse = (mean - target).pow(2).mean().item()
    pixels = 3 * 8 * 8
    # at σ² = MSE the NLL per image is D/2 · (1 + log 2π + log MSE)
    expected = pixels / 2 * (1 + math.log(2 * math.pi) + math.log(mse))
    assert reconstruction_loss(logits, target, "gaussian").item() == pytest.approx(expected, rel=1e-5)

    def nll_at(sigma: float) -> float:
        return (((mean - target) ** 2) / (2 * sigma**2) + math.log(sigma) + 0.5 * math.log(2 * math.pi)).sum().item() / 4

    best = math.sqrt(mse)
    assert expected < min(nll_at(best * 0.9), nll_at(best * 1.1))  # any other σ fits worse


def test_calibrated_gaussian_keeps_log_sigma_above_minus_six():
    target = torch.full((1, 1, 2, 2), 0.5)
    value = reconstruction_loss(torch.zeros(1, 1, 2, 2), target, "gaussian")  # a perfect reconstruction
    assert value.item() == pytest.approx(4 * (-6.0 + 0.5 * math.log(2 * math.pi)), rel=1e-6)


def test_a_perceptual_loss_on_the_evaluation_backbone_is_refused(tmp_path, capsys, tiny_config):
    from vaegen.apps.cli import main
    from vaegen.config import load_config
    from vaegen.errors import ConfigError

    explicit = tiny_config(tmp_path / "a", loss={"perceptual": "efficientnet-lite0"}, eval={"backbone": "efficientnet-lite0"},
                           output={"select": "fid"})
    with pytest.raises(ConfigError, match="loss.perceptual.*efficientnet-lite0.*also the network"):
        load_config(explicit)
    assert main(["train", "--config", str(explicit)]) == 2

    # `auto` is refused once it resolves (offline: to efficientnet-lite0), before any network loads
    auto = tiny_config(tmp_path / "b", loss={"perceptual": "efficientnet-lite0"}, eval={"backbone": "auto", "extra_backbones": ["dinov2"]},
                       output={"select": "fid"})
    load_config(auto)
    import vaegen.evaluation.backbones

    if vaegen.evaluation.backbones.resolve_backbone_name("auto") != "efficientnet-lite0":
        pytest.skip("the Inception weights are present here, so auto resolves to another network")
    assert main(["train", "--config", str(auto)]) == 2
    assert not (tmp_path / "b" / "logs" / "tiny" / "checkpoints").exists()

    # an extra that `auto` resolved to is scored once, so it is no second opinion: the run is refused for want of one
    lone = tiny_config(tmp_path / "c", loss={"perceptual": "inception"}, eval={"backbone": "auto", "extra_backbones": ["efficientnet-lite0"]},
                       output={"select": "fid"})
    load_config(lone)
    capsys.readouterr()
    assert main(["train", "--config", str(lone)]) == 2
    assert "reported on a second network too" in capsys.readouterr().err
    assert not (tmp_path / "c" / "logs" / "tiny" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("scoring", "refusal"),
    [
        ({"backbone": "inception-64", "extra_backbones": ["dinov2"]}, "eval.backbone resolves to inception-64"),
        ({"backbone": "efficientnet-lite0", "extra_backbones": ["inception-64"]}, "eval.extra_backbones lists inception-64"),
        ({"backbone": "efficientnet-lite0"}, "reported on a second network too: set eval.extra_backbones: \\[dinov2\\]"),
        ({"backbone": "efficientnet-lite0", "extra_backbones": ["efficientnet-lite0"]}, "repeats a network"),
        ({"backbone": "none", "extra_backbones": ["dinov2"]}, "eval.backbone is none, so nothing is scored"),
        ({"backbone": "efficientnet-lite0", "extra_backbones": ["dinov2"]}, None),
    ],
)
def test_a_perceptual_loss_is_scored_on_two_networks_neither_its_own(tmp_path, scoring, refusal, tiny_config):
    from vaegen.config import load_config
    from vaegen.errors import ConfigError

    select = "val_nelbo" if scoring["backbone"] == "none" else "fid"
    path = tiny_config(tmp_path, loss={"perceptual": "inception"}, eval=scoring, output={"select": select})
    if refusal is None:
        assert load_config(path).eval.extra_backbones == ("dinov2",)
    else:
        with pytest.raises(ConfigError, match=refusal):
            load_config(path)


def test_perceptual_loss_is_zero_at_the_target_and_trains_the_reconstruction():
    from vaegen.training.perceptual import PerceptualLoss

    loss = PerceptualLoss("efficientnet-lite0", weight=2.0, device=torch.device("cpu"))
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    reconstruction = torch.full_like(target, 0.5, requires_grad=True)
    value = loss(reconstruction, target)
    value.backward()
    assert value.item() > 0 and reconstruction.grad.abs().sum().item() > 0
    assert not any(p.requires_grad for p in loss.backbone.parameters())
