"""The families beyond the VAE in the apps: for each, a 2-trial `vaegen tune` sweep over one of its own settings
trains through Ray, picks a winner that vaegen.load samples, and the gallery page opens that winner and generates
from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import read_summary

import vaegen
from vaegen.apps.cli import main

pytest.importorskip("streamlit", reason="the gallery needs streamlit: pip install -e '.[ui]'")
from streamlit.testing.v1 import AppTest  # noqa: E402

UI = str(Path(__file__).resolve().parents[1] / "ui.py")
VQ = {"name": "conv_vqvae", "codebook_size": 32, "code_dim": 4}
# model.name -> (the base config's model and sampler, the one setting of its own the sweep searches)
FAMILIES = {
    "conv_vqvae": (VQ, {"name": "gmm", "components": 2}, {"model.commitment_weight": {"choice": [0.1, 0.5]}}),
    "vq_prior": ({"name": "vq_prior", "prior_width": 16, "prior_heads": 2}, {"name": "prior"},
                 {"model.prior_layers": {"choice": [1, 2]}}),
}


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory, tiny_config) -> Path:
    folder = tmp_path_factory.mktemp("vq")
    config = tiny_config(folder, train={"epochs": 2}, model=VQ, sampler={"name": "gmm", "components": 2},
                         output={"select": "val_recon", "run_name": "vq"})
    assert main(["train", "--config", str(config)]) == 0
    return folder / "best" / "vq"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_tunes_loads_and_shows_in_the_gallery(name, tmp_path, monkeypatch, tiny_sweep, first_stage):
    model, sampler, space = FAMILIES[name]
    sweep_file = tiny_sweep(tmp_path, space, num_samples=2, points_to_evaluate=[
        {key: choices["choice"][index] for key, choices in space.items()} for index in (0, 1)])
    sweep = yaml.safe_load(sweep_file.read_text())
    first = {"first_stage": str(first_stage)} if name == "vq_prior" else {}
    sweep["base"]["model"] = {"widths": [8, 16], **model, **first}
    sweep["base"]["sampler"] = sampler
    sweep_file.write_text(yaml.safe_dump(sweep))
    assert main(["tune", "--config", str(sweep_file)]) == 0

    rows = read_summary(tmp_path)
    assert len(rows) == 2 and all(row["status"] in ("finished", "stopped early") for row in rows)
    best = tmp_path / "best" / "tiny-best"
    assert json.loads((best / "metrics.json").read_text())["value"] == pytest.approx(
        min(float(row["best_fd_efficientnet_lite0"]) for row in rows))
    assert vaegen.load(best).config.model.name == name
    assert vaegen.load(best).sample(2, seed=0).shape == (2, 3, 16, 16)

    monkeypatch.setenv("VAEGEN_BEST_DIR", str(tmp_path / "best"))
    at = AppTest.from_file(UI, default_timeout=120).run()
    at.sidebar.radio(key="run").set_value("tiny-best").run()
    at.number_input(key="count").set_value(3)
    at.button(key="generate").click().run()
    assert not at.exception, at.exception
    assert any(image.proto.imgs[0].alt.startswith("3 samples") for image in at.image)
