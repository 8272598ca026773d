"""Sharing a model: the model card every best-model folder gets, and vaegen.load of a Hugging Face Hub id (offline,
from the Hugging Face cache)."""

from __future__ import annotations

import json
import shutil

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch

import vaegen
from vaegen.apps.cli import main
from vaegen.errors import CheckpointError
from vaegen.sharing import hub_repo_id

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fid_config):
    """A tiny run scored by FD (its card then carries a protocol), sampled from a mixture: its best-model folder."""
    tmp_path = tmp_path_factory.mktemp("shared")
    with pytest.MonkeyPatch.context() as patch:
        from helpers import CountingBackbone

        import vaegen.evaluation.backbones

        patch.setattr(vaegen.evaluation.backbones, "load_backbone", lambda name, device="cpu", weights=None: CountingBackbone())
        assert main(["train", "--config", str(fid_config(tmp_path, train={"epochs": 2}, sampler={"name": "gmm", "components": 2}))]) == 0
    return tmp_path / "best" / "tiny"


def test_every_best_model_folder_has_a_hugging_face_model_card(trained):
    card = huggingface_hub.ModelCard.load(trained / "README.md")
    assert card.data.library_name == "vaegen" and {"vaegen", "vae"} <= set(card.data.tags)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert f"selected by fd_efficientnet_lite0 = {metrics['value']:.4g}" in card.text
    assert f"| precision_efficientnet_lite0 | {metrics['metrics']['precision_efficientnet_lite0']:.4g} |" in card.text
    assert "40 generated vs 240 real train images" in card.text  # the protocol the numbers were measured with
    assert "![samples](samples.png)" in card.text and "Golden-Red" in card.text and 'vaegen.load("' in card.text


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, trained):
    """A Hugging Face cache holding `someone/apples` (the trained folder) as `hf download` leaves it; offline mode."""
    repo = tmp_path / "hub" / "models--someone--apples"
    shutil.copytree(trained, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no folder named `someone` here: the id is the Hub's
    return tmp_path / "hub"


@pytest.mark.parametrize("name", ["someone/apples", "hf://someone/apples"])
def test_vaegen_load_reads_a_hub_id_from_the_cache_offline(hub_cache, trained, name):
    from_hub = vaegen.load(name)
    local = vaegen.load(trained)
    assert from_hub.classes == local.classes and from_hub.sampler is not None
    torch.testing.assert_close(from_hub.sample(4, seed=3), local.sample(4, seed=3), rtol=0, atol=0)


def test_a_hub_id_neither_cached_nor_reachable_names_the_id_and_the_way_forward(hub_cache):
    with pytest.raises(CheckpointError) as caught:
        vaegen.load("someone/pears")
    assert "someone/pears" in str(caught.value) and "hf download someone/pears" in str(caught.value)
    assert main(["test", "--checkpoint", "someone/pears", "--set", "backbone=none"]) != 0


def test_which_paths_are_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "best_models").mkdir()
    assert hub_repo_id("someone/apples") == "someone/apples" and hub_repo_id("hf://someone/apples") == "someone/apples"
    assert hub_repo_id("best_models/apples") is None  # a folder here: the local path's own error is the one to give
    assert hub_repo_id("a/b/c") is None and hub_repo_id("hf://../x") is None and hub_repo_id(str(tmp_path / "x")) is None
