"""The families beyond the VAE in the apps: one `vaegen tune` sweep trains a trial of each through Ray and exports a
winner that vaegen.load samples; the gallery page opens a model of each and generates from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import read_summary

import vaegen
from vaegen.apps.cli import main
from vaegen.models import reconstructs

pytest.importorskip("streamlit", reason="the gallery needs streamlit: pip install -e '.[ui]'")
from streamlit.testing.v1 import AppTest  # noqa: E402

UI = str(Path(__file__).resolve().parents[1] / "ui.py")
VQ = {"name": "conv_vqvae", "codebook_size": 32, "code_dim": 4}
# model.name -> the model and sampler settings of a tiny run of it (every family's keys sit side by side in model.*)
FAMILIES = {
    "conv_vqvae": (VQ, "gmm"),
    "vq_prior": ({"name": "vq_prior", "prior_layers": 1, "prior_width": 16, "prior_heads": 2}, "prior"),
    "hvae": ({"name": "hvae", "latent_channels": 2, "blocks": 1}, "prior"),
    "dcgan": ({"name": "dcgan", "gan_loss": "hinge"}, "prior"),
    "realnvp": ({"name": "realnvp", "flow_scales": 2, "flow_couplings": 2, "flow_width": 8, "flow_blocks": 1}, "prior"),
    "ddpm": ({"name": "ddpm", "layers_per_block": 1, "timesteps": 50, "sample_steps": 4}, "prior"),
}
# what a run of each selects its best epoch on, where not val_recon (the families without a reconstruction; a GAN has only FD)
SELECT = {"vq_prior": "val_loss", "realnvp": "val_loss", "ddpm": "val_loss", "dcgan": "fid"}
# the words the gallery's temperature slider and sidebar use for each (the family's, not the VAE's)
TEMPERATURE = {"conv_vqvae": "spread of the codes", "vq_prior": "prior's logits", "hvae": "standard deviation of z",
               "dcgan": "standard deviation of z", "realnvp": "standard deviation of z", "ddpm": "noise the denoising starts"}
DESCRIBED = {"conv_vqvae": "32 codes of 4 dimensions", "vq_prior": "the learned prior over codes", "hvae": "2 latent levels",
             "dcgan": "hinge loss, 1 critic step(s)", "realnvp": "2 scales of 2 couplings", "ddpm": "DDIM from Gaussian noise, 4 of its 50"}
FD = {"every": 1, "backbone": "efficientnet-lite0", "num_samples": 20, "batch_size": 10, "kid_subset_size": 10}


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory, tiny_config) -> Path:
    folder = tmp_path_factory.mktemp("vq")
    config = tiny_config(folder, train={"epochs": 2}, model=VQ, sampler={"name": "gmm", "components": 2},
                         output={"select": "val_recon", "run_name": "vq"})
    assert main(["train", "--config", str(config)]) == 0
    return folder / "best" / "vq"


def test_one_sweep_tunes_each_family(tmp_path, tiny_sweep, first_stage):
    space = {"model.name": {"choice": list(FAMILIES)}, "sampler.name": {"choice": ["gmm", "prior"]}}
    pinned = [{"model.name": name, "sampler.name": sampler} for name, (_, sampler) in FAMILIES.items()]
    sweep_file = tiny_sweep(tmp_path, space, num_samples=len(FAMILIES), points_to_evaluate=pinned)
    sweep = yaml.safe_load(sweep_file.read_text())
    model = {key: value for settings, _ in FAMILIES.values() for key, value in settings.items() if key != "name"}
    sweep["base"]["model"] = {"widths": [8, 16], "first_stage": str(first_stage), **model}
    sweep["base"]["sampler"] = {"components": 2, "covariance": "diag"}
    sweep_file.write_text(yaml.safe_dump(sweep))
    assert main(["tune", "--config", str(sweep_file)]) == 0

    rows = read_summary(tmp_path)
    assert sorted(row["model.name"] for row in rows) == sorted(FAMILIES)
    assert all(row["status"] in ("finished", "stopped early") and float(row["best_fd_efficientnet_lite0"]) > 0 for row in rows)
    best = tmp_path / "best" / "tiny-best"
    winner = min(rows, key=lambda row: float(row["best_fd_efficientnet_lite0"]))
    assert json.loads((best / "metrics.json").read_text())["value"] == pytest.approx(float(winner["best_fd_efficientnet_lite0"]))
    model = vaegen.load(best)
    assert model.config.model.name == winner["model.name"] and model.sample(2, seed=0).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_gallery_generates_from_each_family(name, tmp_path, monkeypatch, tiny_config, first_stage):
    settings, sampler = FAMILIES[name]
    first = {"first_stage": str(first_stage)} if name == "vq_prior" else {}
    select = SELECT.get(name, "val_recon")
    config = tiny_config(tmp_path, train={"epochs": 1}, model={**settings, **first}, output={"select": select},
                         sampler={"name": sampler, "components": 2}, eval=FD if select == "fid" else {})
    assert main(["train", "--config", str(config)]) == 0
    loaded = vaegen.load(tmp_path / "best" / "tiny")
    if reconstructs(loaded.model):
        assert loaded.reconstruct(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)
    else:  # a family without codes says so, and hasattr stays False
        with pytest.raises(AttributeError, match=r"no reconstruct\(\).*sample\(\)"):
            loaded.reconstruct(torch.rand(2, 3, 16, 16))
        assert not hasattr(loaded, "encode")
    monkeypatch.setenv("VAEGEN_BEST_DIR", str(tmp_path / "best"))
    at = AppTest.from_file(UI, default_timeout=120).run()
    at.sidebar.radio(key="run").set_value("tiny").run()
    at.number_input(key="count").set_value(3)
    at.button(key="generate").click().run()
    assert not at.exception, at.exception
    assert any(image.proto.imgs[0].alt.startswith("3 samples") for image in at.image)
    assert TEMPERATURE[name] in at.slider(key="temperature").label
    sidebar = " ".join(block.value for block in at.sidebar.markdown)
    assert DESCRIBED[name] in sidebar and ("β" in sidebar) == (name == "hvae")  # β weighs no other family's terms
    sampler = {widget.label: widget for widget in [*at.sidebar.slider, *at.sidebar.selectbox, *at.sidebar.number_input]}
    # guidance steers towards a class: no control for it on these unconditional models
    assert sorted(sampler) == (["ddim_eta", "diffusion_sampler", "sample_steps"] if name == "ddpm" else [])
    if name == "ddpm":  # the sampler's settings change the samples without retraining; a refused one says why
        trained = {image.proto.imgs[0].url for image in at.image}
        sampler["ddim_eta"].set_value(1.0).run()
        redrawn = [image for image in at.image if "ddim_eta 1.0" in image.proto.imgs[0].alt]
        assert not at.exception and redrawn and redrawn[0].proto.imgs[0].url not in trained  # other pixels, not a caption
        next(w for w in at.sidebar.number_input if w.label == "sample_steps").set_value(51).run()
        assert not at.exception and any("model.sample_steps" in error.value for error in at.error)
