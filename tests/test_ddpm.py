"""The diffusion family (model.name: ddpm): its noise schedules and targets as published, its samplers (DDIM
deterministic or with η of DDPM's noise, DDPM ancestral with temperature, step counts changeable after training), classifier-free guidance, and a
tiny run through `vaegen train` (selected by FD, resumed exactly), `vaegen test` (with another step count) and
`vaegen.load`; bad configs are refused before training."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from helpers import SAMPLE, SAMPLE_CLASSES

import vaegen
from vaegen.apps.cli import main
from vaegen.apps.gallery import sampling_controls
from vaegen.checkpoint import load_training_state, save_model
from vaegen.config import config_from_dict
from vaegen.models import build_model, family_of
from vaegen.models.diffusion import ancestral_step, ddim_step

SMALL = {"name": "ddpm", "widths": [8, 16], "layers_per_block": 1, "timesteps": 50, "sample_steps": 8}


def ddpm(size: int = 16, classes: int = 1, **model):
    config = config_from_dict({"data": {"root": "unused", "image_size": size}, "model": {**SMALL, **model},
                               "output": {"select": "fid"}})
    family_of(config.model).check(config)  # refused as the training loop would refuse it
    torch.manual_seed(0)
    return build_model(config.model, (size, size), channels=3, num_classes=classes), config


def test_the_cosine_schedule_keeps_more_signal_than_the_linear_one_as_published():
    steps = 1000
    linear, _ = ddpm(timesteps=steps, noise_schedule="linear")
    cosine, _ = ddpm(timesteps=steps, noise_schedule="cosine")
    half = steps // 2
    # Ho et al. 2020: β linear from 1e-4 to 0.02, ᾱ_t = Π(1 - β_s)
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    assert linear.scheduler.alphas_cumprod[half].item() == pytest.approx(torch.prod(1 - betas[: half + 1]).item(), rel=1e-4)
    # Nichol & Dhariwal 2021: ᾱ_t = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2), s = 0.008
    f = lambda t: math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cosine.scheduler.alphas_cumprod[half].item() == pytest.approx(f(half + 1) / f(0), rel=1e-3)
    assert cosine.scheduler.alphas_cumprod[half] > 2 * linear.scheduler.alphas_cumprod[half]  # 0.49 against 0.08


def test_the_forward_pass_predicts_epsilon_or_v_at_the_drawn_noise_level():
    x = torch.rand(6, 3, 16, 16)
    for prediction in ("epsilon", "v"):
        model, config = ddpm(prediction=prediction)
        prediction_out, target = model(x, generator=torch.Generator().manual_seed(0))
        draws = torch.Generator().manual_seed(0)  # the forward pass's draws, in its order: t, then ε
        t = torch.randint(0, 50, (6,), generator=draws)
        noise = torch.randn(x.shape, generator=draws)
        betas = torch.linspace(1e-4 * 20, 0.02 * 20, 50, dtype=torch.float64)  # linear, scaled by 1000/T
        alpha_bar = torch.cumprod(1 - betas, 0)[t].float()[:, None, None, None]
        x0 = x * 2 - 1
        expected = noise if prediction == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
        assert torch.allclose(target, expected, atol=1e-5), prediction
        assert prediction_out.shape == x.shape
        terms = family_of(config.model).training_terms((prediction_out, target), x, 1.0, config.loss)
        assert terms["loss"].item() == pytest.approx((prediction_out - target).pow(2).sum().item() / 6, rel=1e-5)


def test_ddim_is_deterministic_per_generator_and_more_steps_change_the_images():
    model, _ = ddpm()
    model.eval()
    first = model.generate(3, torch.Generator().manual_seed(0))
    assert first.shape == (3, 3, 16, 16) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, model.generate(3, torch.Generator().manual_seed(0)))
    assert not torch.allclose(first, model.generate(3, torch.Generator().manual_seed(1)))
    model.sample_steps = 25
    assert not torch.allclose(first, model.generate(3, torch.Generator().manual_seed(0)), atol=1e-4)


def test_ddpm_ancestral_sampling_draws_noise_at_each_step_scaled_by_the_temperature():
    model, _ = ddpm(diffusion_sampler="ddpm")
    a, b = (model.generate(2, torch.Generator().manual_seed(seed)) for seed in (0, 1))
    assert not torch.allclose(a, b) and torch.equal(a, model.generate(2, torch.Generator().manual_seed(0)))
    assert not torch.allclose(model.generate(2, torch.Generator().manual_seed(0), temperature=0.5), a)
    scheduler, x, output = model.sampling_scheduler(), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    t = scheduler.timesteps[10]

    def step(seed, temperature):
        return ancestral_step(scheduler, output, t, x, torch.Generator().manual_seed(seed), temperature)

    mean = step(0, 0.0)
    assert torch.allclose(mean, step(1, 0.0), atol=1e-6)  # no noise at temperature 0: the posterior mean
    one, two = step(0, 1.0) - mean, step(0, 2.0) - mean
    assert one.abs().mean() > 0.1 and torch.allclose(two, 2 * one, atol=1e-5)  # the same z, twice as far
    assert torch.equal(ancestral_step(scheduler, output, scheduler.timesteps[-1], x, torch.Generator(), 2.0),
                       scheduler.step(output, scheduler.timesteps[-1], x).prev_sample)  # the last step draws nothing


def test_ddim_eta_draws_ddpms_noise_at_one_and_scales_it_by_the_temperature():
    model, config = ddpm(ddim_eta=1.0)
    assert "η 1" in family_of(config.model).describe(config)["sampler"]  # the gallery says which DDIM draws
    assert "η" not in family_of(config.model).describe(ddpm()[1])["sampler"]
    a, b = (model.generate(2, torch.Generator().manual_seed(seed)) for seed in (0, 1))
    assert not torch.allclose(a, b) and torch.equal(a, model.generate(2, torch.Generator().manual_seed(0)))
    model.ddim_eta = 0.0
    assert not torch.allclose(model.generate(2, torch.Generator().manual_seed(0)), a, atol=1e-3)
    # every step of the schedule: DDIM with η = 1 adds the noise of DDPM's ancestral step (Song et al. 2021, sec. 4.1)
    model.sample_steps = 50  # = model.timesteps
    ddim, ancestral = model.sampling_scheduler(), ddpm(diffusion_sampler="ddpm")[0].sampling_scheduler()
    x, output = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    t = ddim.timesteps[20]
    assert t == ancestral.timesteps[20]

    def noise(step, scheduler, temperature, *eta):
        return step(scheduler, output, t, x, *eta, torch.Generator().manual_seed(3), temperature) - step(
            scheduler, output, t, x, *eta, torch.Generator().manual_seed(3), 0.0)

    assert noise(ddim_step, ddim, 1.0, 1.0).abs().mean() > 0.01
    assert torch.allclose(noise(ddim_step, ddim, 1.0, 1.0), noise(ancestral_step, ancestral, 1.0), atol=1e-5)
    assert torch.allclose(noise(ddim_step, ddim, 2.0, 1.0), 2 * noise(ddim_step, ddim, 1.0, 1.0), atol=1e-5)
    assert torch.allclose(noise(ddim_step, ddim, 1.0, 0.5), 0.5 * noise(ddim_step, ddim, 1.0, 1.0), atol=1e-5)
    assert torch.equal(ddim_step(ddim, output, t, x, 0.0, torch.Generator(), 1.0), ddim.step(output, t, x).prev_sample)


def test_a_small_model_samples_in_well_under_a_second_on_one_thread():
    model, _ = ddpm()
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.generate(1, torch.Generator().manual_seed(0))  # warm-up
        started = time.perf_counter()
        model.generate(16, torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    assert seconds < 0.6, f"16 images at 8 DDIM steps took {seconds:.2f} s"


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_ddpm_is_selected_by_fd_resumes_exactly_tests_and_loads(tmp_path, fid_config):
    settings = {"model": SMALL, "train": {"epochs": 2, "ema": 0.99}, "data": {"cache_dir": str(tmp_path / "cache")}}
    straight = fid_config(tmp_path / "a", **settings)
    assert main(["train", "--config", str(straight)]) == 0
    logged = rows(tmp_path / "a" / "logs" / "tiny")
    assert [row["epoch"] for row in logged] == [1, 2] and all("fd_efficientnet_lite0" in row for row in logged)
    assert logged[-1]["train_loss"] < logged[0]["train_loss"] and "val_loss" in logged[-1]
    best = tmp_path / "a" / "best" / "tiny"
    assert json.loads((best / "metrics.json").read_text())["criterion"] == "fd_efficientnet_lite0"

    halves = fid_config(tmp_path / "b", **{**settings, "train": {"epochs": 1, "ema": 0.99}})
    assert main(["train", "--config", str(halves)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=2"]) == 0
    a, b = (load_training_state(tmp_path / name / "logs" / "tiny" / "checkpoints" / "last.pt") for name in "ab")
    for part in ("model", "ema"):
        weights = a[part] if part == "model" else a[part]["module"]
        again = b[part] if part == "model" else b[part]["module"]
        assert all(torch.allclose(weights[key].float(), again[key].float(), atol=1e-6, rtol=0) for key in weights)

    model = vaegen.load(best)
    images = model.sample(4, seed=0)
    assert images.shape == (4, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.sample(4, seed=0)) and not torch.equal(images, model.sample(4, seed=1))
    faster = vaegen.load(best, sampling={"sample_steps": 2})
    assert faster.config.model.sample_steps == 2 and not torch.allclose(faster.sample(4, seed=0), images)

    args = ["--checkpoint", str(best), "--set", "num_samples=16", "--set", "backbone=none"]
    assert main(["test", *args, "--set", "model.diffusion_sampler=ddpm", "--set", f"output_dir={tmp_path / 'full'}"]) == 0
    report = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert report["model"] == {"diffusion_sampler": "ddpm"} and report["sample_seconds_per_image"] > 0
    assert main(["test", *args, "--set", "model.sample_steps=2", "--set", f"output_dir={tmp_path / 'fast'}"]) == 0
    fast = json.loads((tmp_path / "fast" / "metrics.json").read_text())
    assert fast["sample_seconds_per_image"] < report["sample_seconds_per_image"]  # 2 DDIM steps against 50 DDPM steps
    assert {"samples.png", "metrics.json"} == {path.name for path in (tmp_path / "fast").iterdir()}


def test_a_conditional_model_with_guidance_samples_each_class(tmp_path, tiny_config):
    model = {**SMALL, "conditional": "embedding", "guidance": 3.0, "label_dropout": 0.2}
    config = tiny_config(tmp_path, train={"epochs": 1}, model=model, output={"select": "val_loss"})
    assert main(["train", "--config", str(config)]) == 0
    loaded = vaegen.load(tmp_path / "best" / "tiny")
    red, golden = loaded.sample(4, labels="Red", seed=0), loaded.sample(4, labels="Golden", seed=0)
    assert red.shape == golden.shape == (4, 3, 16, 16) and not torch.allclose(red, golden)
    unguided = vaegen.load(tmp_path / "best" / "tiny", sampling={"guidance": 1.0})
    assert not torch.allclose(unguided.sample(4, labels="Red", seed=0), red)
    own = [loaded.model.generate(4, torch.Generator().manual_seed(0), class_weights=torch.eye(3)[k]) for k in (0, 2)]
    assert not torch.allclose(*own)


@pytest.mark.parametrize(("sections", "key"), [
    ({"model": {"conditional": "onehot"}}, "model.conditional"),
    ({"sampler": {"name": "gmm"}}, "sampler.name"),
    ({"output": {"select": "val_nelbo"}}, "output.select"),
    ({"model": {"sample_steps": 51}}, "model.sample_steps"),
    ({"model": {"timesteps": 20}}, "model.timesteps"),
    ({"model": {"guidance": 2.0}}, "model.guidance"),
    ({"model": {"diffusion_sampler": "ddpm", "ddim_eta": 1.0}}, "model.ddim_eta"),
    ({"model": {"ddim_eta": 1.5}}, "model.ddim_eta"),
    ({"model": {"conditional": "embedding", "guidance": 2.0, "label_dropout": 0.0}}, "model.label_dropout"),
    ({"model": {"prediction": "x0"}}, "model.prediction"),
    ({"model": {"label_dropout": 1.0}}, "model.label_dropout"),
    ({"adversarial": {"enabled": True}}, "adversarial.enabled"),
    ({"loss": {"perceptual": "inception"}}, "loss.perceptual"),
])
def test_bad_ddpm_configs_are_refused_before_training(tmp_path, capsys, tiny_config, sections, key):
    merged = {"output": {"select": "val_loss"}, **sections, "model": {**SMALL, **sections.get("model", {})}}
    config = tiny_config(tmp_path, **merged)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "logs" / "tiny" / "checkpoints").exists()


def untrained_ddpm(folder):
    """folder/ as `vaegen train` exports a ddpm (SMALL, on the bundled sample at 16 px), untrained: no training, fast."""
    model, config = ddpm(classes=len(SAMPLE_CLASSES))
    config = config.model_copy(update={"data": config.data.model_copy(update={"root": SAMPLE, "cache_dir": folder / "cache"})})
    folder.mkdir(parents=True)
    save_model(folder / "model.safetensors", model, {"classes": SAMPLE_CLASSES})
    (folder / "config.yaml").write_text(config.to_yaml())
    return folder


@pytest.mark.parametrize(("setting", "key"), [
    ("model.widths=[4, 8]", "model.widths"), ("model.sample_steps=0", "sample_steps"), ("model.sample_steps=51", "model.sample_steps"),
    ("sampler=gmm", "sampler"), ("model.ddim_eta=-1", "model.ddim_eta"),
])
def test_vaegen_test_changes_only_sampling_settings(tmp_path, capsys, setting, key):
    best = untrained_ddpm(tmp_path / "ddpm")
    assert main(["test", "--checkpoint", str(best), "--set", setting, "--set", "backbone=none"]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err


def test_a_family_without_sampling_keys_changes_none(tmp_path, capsys, make_run):
    best = make_run(tmp_path / "best", "vae")
    assert main(["test", "--checkpoint", str(best), "--set", "model.latent_dim=4", "--set", "backbone=none"]) == 2
    err = capsys.readouterr().err
    assert "model.latent_dim" in err and "none of its model.* keys" in err


def test_the_gallerys_sampler_controls_come_from_the_schema(tmp_path):
    controls = {control.key: control for control in sampling_controls(vaegen.load(untrained_ddpm(tmp_path / "ddpm")))}
    assert list(controls) == ["diffusion_sampler", "sample_steps", "ddim_eta"]  # no guidance: unconditional
    assert controls["diffusion_sampler"].choices == ("ddpm", "ddim") and controls["sample_steps"].value == 8
    assert (controls["ddim_eta"].low, controls["ddim_eta"].high, controls["ddim_eta"].value) == (0.0, 1.0, 0.0)
    conditional = ddpm(conditional="embedding", classes=3)[1]
    assert "guidance" in family_of(conditional.model).adjustable(conditional)
