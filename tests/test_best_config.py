"""configs/train_apples_best.yaml (and the quickstart, its scaled copy): it validates, trains (shrunk to seconds), and its
checkpoint samples from its mixture."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE

import vaegen
from vaegen.apps.cli import main
from vaegen.config import load_config
from vaegen.samplers.mixture import SAMPLER_FILE

BEST = Path(__file__).resolve().parents[1] / "configs" / "train_apples_best.yaml"


QUICKSTART = BEST.parent / "quickstart.yaml"


# the quickstart is the best recipe on the 270 training images of the bundled sample: fewer mixture components
@pytest.mark.parametrize("config, scaled", [(BEST, set()), (QUICKSTART, {"sampler.components"})])
def test_the_recipe_and_the_quickstart_are_the_ablations_best_row(config, scaled):
    sys.path.insert(0, str(BEST.parents[1] / "scripts"))
    import ablate

    recipe = load_config(config)
    for key, value in ablate.BEST.items():
        section, name = key.split(".")
        assert (getattr(getattr(recipe, section), name) == value) != (key in scaled), key


# the new families' recipes are their rows of scripts/ablate.py or scripts/families.py at 96 px: one more stage (a
# 12 x 12 code grid rather than 8 x 8; a GAN's 6 x 6 grid rather than 4 x 4)
@pytest.mark.parametrize("config, script, row, scaled", [
    ("train_apples_vqvae.yaml", "ablate", "VQVAE", {"model.widths"}), ("train_apples_vq_prior.yaml", "ablate", "VQ_PRIOR", set()),
    ("train_apples_hvae.yaml", "ablate", "HVAE", set()), ("train_apples_dcgan.yaml", "families", "DCGAN", {"model.widths"}),
    ("train_apples_wgan_gp.yaml", "families", "WGAN_GP", {"model.widths"}), ("train_apples_ddpm.yaml", "families", "DDPM", set()),
    ("train_apples_realnvp.yaml", "families", "REALNVP", set()),
])
def test_the_new_families_recipes_are_their_ablation_rows(config, script, row, scaled):
    sys.path.insert(0, str(BEST.parents[1] / "scripts"))
    rows = importlib.import_module(script)

    recipe = load_config(BEST.parent / config)
    for key, value in getattr(rows, row).items():
        section, name = key.split(".")
        got = getattr(getattr(recipe, section), name)
        assert (got == (tuple(value) if isinstance(value, list) else value)) != (key in scaled), key


def test_the_best_recipe_trains_and_ships_its_sampler(tmp_path):
    recipe = load_config(BEST)
    assert (recipe.sampler.name, recipe.loss.recon) == ("gmm", "gaussian")
    shrink = {  # the recipe's levers as they are, at a size that trains in seconds
        "data.root": str(SAMPLE), "data.image_size": 16, "data.cache_dir": str(tmp_path / "cache"), "data.val_fraction": 0.2,
        "model.widths": [8, 16], "model.latent_dim": 8, "train.epochs": 2, "train.batch_size": 32, "train.device": "cpu",
        "sampler.components": 3,
        "eval.every": 1, "eval.backbone": "none", "output.select": "val_nelbo",
        "output.logs_dir": str(tmp_path / "logs"), "output.best_dir": str(tmp_path / "best"), "output.run_name": "best",
    }
    assert main(["train", "--config", str(BEST), *(f"--set={key}={json.dumps(value)}" for key, value in shrink.items())]) == 0

    best = tmp_path / "best" / "best"
    assert (best / SAMPLER_FILE).is_file()
    model = vaegen.load(best)
    assert model.latent_density is not None
    from_mixture = model.sample(4, seed=0)
    assert torch.equal(from_mixture, model.sample(4, seed=0))
    model.latent_density = None
    assert not torch.allclose(from_mixture, model.sample(4, seed=0))
    assert main(["test", "--checkpoint", str(best), "--set", "backbone=none"]) == 0
    assert json.loads((best / "test" / "metrics.json").read_text())["sampler"] == "gmm"
