"""Plain helpers shared by test files: constants, readers of what a run wrote, stand-in networks.

Fixtures (tiny_config, fid_config, tiny_sweep, make_run, counting_backbone, ...) live in conftest.py;
what is here is imported (`from helpers import SAMPLE`) because it is needed where a fixture cannot
reach: at import time, in parametrize, in a child process, or as a plain value.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from vaegen.checkpoint import load_training_state

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "apples_sample"  # the bundled sample: 300 photos, 100 in each class
SAMPLE_CLASSES = ["Golden", "Golden-Red", "Red"]
# the FD protocol make_run (conftest.py) writes into metrics.json for a model scored by FD (fid=...)
EXPORT_PROTOCOL = {"backbone": "efficientnet-lite0", "feature_dim": 1280, "num_generated": 500, "num_real": 240,
                   "reference": "train", "image_size": [16, 16], "sampler": "prior", "temperature": 1.0}

TIMINGS = ("images_per_s", "wall_s")  # metrics.jsonl keys that differ between two runs of the same training

# A resumed run matches the straight one to float noise (kernels round differently at other addresses)
# as long as no ReLU input sits at noise level: one that does flips with that noise and the runs part.
# With the fused Adam kernel, seed 0's tiny model has such inputs by epoch 3 (a near-dead channel of
# the first layer; drift 1e-4); seeds 1 to 6 stay within 1.2e-7. The tests measure resume, not that.
RESUME_SEED = 1


def checkpoint_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights in a run's checkpoints/last.pt."""
    return load_training_state(run_dir / "checkpoints" / "last.pt")["model"]


def metric_rows(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl, one dict an epoch, without images_per_s and wall_s (timings, never the same twice)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def read_summary(tmp_path: Path) -> list[dict]:
    """The summary.csv rows of the sweep `tiny_sweep(tmp_path, ...)` wrote."""
    with (tmp_path / "logs" / "tiny" / "summary.csv").open() as handle:
        return list(csv.DictReader(handle))


def sample_subset(root: Path, per_class: dict[str, int]) -> Path:
    """root/<class>/ holding the first `count` photos (by name) of each named class of the bundled sample."""
    for name, count in per_class.items():
        (root / name).mkdir(parents=True)
        for image in sorted((SAMPLE / name).iterdir())[:count]:
            shutil.copy(image, root / name / image.name)
    return root


class CountingBackbone(nn.Module):
    """A fixed random feature map standing in for a real network; counts every image it sees."""

    name = "efficientnet-lite0"
    num_features = 8
    input_size = 16
    resize = "none (test backbone)"
    images_seen = 0

    def __init__(self):
        super().__init__()
        self.project = nn.Conv2d(3, 8, 4, stride=4, bias=False)  # all its weights seeded: the same network in every call
        torch.nn.init.normal_(self.project.weight, generator=torch.Generator().manual_seed(0))
        self.requires_grad_(False)

    def forward(self, images):
        CountingBackbone.images_seen += len(images)
        return self.project(images).mean((2, 3))

    def logits(self, features):
        """Ten 'classes' from the features, so the Inception Score runs as it does on a real classifier."""
        return features @ torch.ones(8, 10).cumsum(1)


class SecondBackbone(CountingBackbone):
    """Another fixed random feature map, under the second network's name."""

    name = "dinov2"

    def logits(self, features):
        return None  # like DINOv2: no classifier, so no Inception Score

    def __init__(self):
        super().__init__()
        torch.nn.init.normal_(self.project.weight, generator=torch.Generator().manual_seed(1))
