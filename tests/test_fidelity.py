"""Conditional fidelity: the classifier that checks a conditional model's samples show the class asked for."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SAMPLE

from vaegen.apps.cli import main
from vaegen.config import DataConfig
from vaegen.data.dataset import load_splits
from vaegen.evaluation.class_fidelity import conditional_fidelity, label_agreement, load_or_train_classifier


@pytest.fixture(scope="module")
def apples(tmp_path_factory):
    """The bundled sample at 32 px (100 images per class) and a classifier trained on its training split."""
    cache = tmp_path_factory.mktemp("cache")
    splits = load_splits(DataConfig(root=SAMPLE, image_size=32, val_fraction=0.3, cache_dir=cache), seed=0)
    classifier = load_or_train_classifier(splits.train, 3, cache, torch.device("cpu"), seed=0)
    return splits, classifier, cache


def test_real_images_agree_with_their_labels_and_shuffled_labels_do_not(apples):
    splits, classifier, _ = apples
    val = splits.val
    assert label_agreement(classifier, val.images, val.labels) >= 0.85
    shuffled = val.labels[torch.randperm(len(val.labels), generator=torch.Generator().manual_seed(0))]
    assert label_agreement(classifier, val.images, shuffled) == pytest.approx(1 / 3, abs=0.15)


def test_the_classifier_is_trained_once_and_cached(apples, monkeypatch, capsys):
    splits, classifier, cache = apples
    import vaegen.evaluation.class_fidelity

    monkeypatch.setattr(vaegen.evaluation.class_fidelity, "train_classifier", lambda *a, **k: pytest.fail("retrained despite the cache"))
    again = load_or_train_classifier(splits.train, 3, cache, torch.device("cpu"), seed=0)
    assert "classifier" not in capsys.readouterr().out  # the training's one-line notice is for the first time only
    assert all(torch.equal(a, b) for a, b in zip(classifier.state_dict().values(), again.state_dict().values()))


def test_training_or_loading_the_classifier_leaves_the_random_stream_alone(apples, tmp_path):
    """A conditional run trains it on a cold cache and loads it on a warm one: both must end the same."""
    splits = apples[0]
    for _ in ("train", "load"):
        before = torch.get_rng_state()
        load_or_train_classifier(splits.train, 3, tmp_path, torch.device("cpu"), seed=0)
        assert torch.equal(torch.get_rng_state(), before)


def test_the_first_training_says_so_and_its_cache_names_the_data_it_came_from(apples, tmp_path, monkeypatch, capsys):
    from safetensors import safe_open

    import vaegen.evaluation.class_fidelity
    from vaegen.data.dataset import FROM_ENTRY

    splits, classifier, _ = apples
    monkeypatch.setattr(vaegen.evaluation.class_fidelity, "train_classifier", lambda *a, **k: classifier)  # the training itself is tested above
    load_or_train_classifier(splits.train, 3, tmp_path, torch.device("cpu"), seed=0)
    [cached] = (tmp_path / "classifiers").glob("*.safetensors")
    assert capsys.readouterr().out == (f"the class-fidelity classifier: trained once on {len(splits.train.images)} "
                                       f"real images, then read from {cached.parent}\n")
    with safe_open(str(cached), framework="pt") as handle:  # so that it goes when its data cache entry goes
        assert handle.metadata() == {FROM_ENTRY: splits.train.fingerprint}


def test_a_model_that_ignores_its_label_scores_about_one_in_three(apples):
    splits, classifier, _ = apples

    class Constant(torch.nn.Module):  # decodes every code to the same real image, whatever the label
        latent_dim = 4
        num_classes = 3

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(splits.val.images[:1].float() / 255)

        def decode(self, z, labels):
            return self.anchor.expand(len(z), -1, -1, -1)

    class Oracle(Constant):  # decodes label k to a real image of class k
        def decode(self, z, labels):
            firsts = torch.stack([splits.val.images[splits.val.labels == k][0] for k in range(3)]).float() / 255
            return firsts[labels]

    scores = conditional_fidelity(classifier, Constant(), ["Golden", "Golden-Red", "Red"], per_class=20, seed=0)
    assert scores["cond_fidelity"] == pytest.approx(1 / 3, abs=0.01)
    assert sorted(scores[f"cond_fidelity/{name}"] for name in ["Golden", "Golden-Red", "Red"]) == [0.0, 0.0, 1.0]
    assert conditional_fidelity(classifier, Oracle(), ["Golden", "Golden-Red", "Red"], 20, seed=0)["cond_fidelity"] >= 2 / 3


def test_conditional_training_and_test_report_fidelity(tmp_path, tiny_config):
    config = tiny_config(tmp_path, model={"conditional": "onehot"}, train={"epochs": 2})
    assert main(["train", "--config", str(config)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "cond_fidelity" in row]
    assert [row["epoch"] for row in evaluated] == [2]  # eval.every 2
    assert 0.0 <= evaluated[0]["cond_fidelity"] <= 1.0 and 0.0 <= evaluated[0]["classifier_val_accuracy"] <= 1.0
    assert main(["test", "--checkpoint", str(tmp_path / "best" / "tiny"), "--set", "backbone=none"]) == 0
    metrics = json.loads((tmp_path / "best" / "tiny" / "test" / "metrics.json").read_text())
    assert {"cond_fidelity", "cond_fidelity/Red", "classifier_val_accuracy"} <= set(metrics)
