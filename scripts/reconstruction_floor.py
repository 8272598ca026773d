"""How far a perfect prior could take an ablation row: the Fréchet and kernel distance of the model's reconstructions
of training images, scored exactly as the row's samples were (same evaluator, count and seed).

    python scripts/ablate.py --data ../shared/data/impressionism --recipe configs/train_impressionism.yaml \
        --rows "best recipe,VQ-VAE +gmm,hierarchical VAE" --section impressionism --out /tmp/abl-imp
    python scripts/reconstruction_floor.py --out /tmp/abl-imp --rows "best recipe,VQ-VAE +gmm,hierarchical VAE"

A sampler that drew exactly the codes of training images would give these samples, so a row's distance from its
sampler (its prior, the mixture or a learned prior over its codes) cannot beat this floor by much: when the floor is
already above a target, the first stage (its reconstructions), not the sampler, is what has to improve.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import vaegen  # noqa: E402
from vaegen.config import config_from_dict  # noqa: E402
from vaegen.data.dataset import load_splits, to_input  # noqa: E402
from vaegen.evaluation.frechet import run_evaluator  # noqa: E402
from vaegen.training.accel import resolve_device  # noqa: E402


def floor(done: dict, device: torch.device) -> dict[str, float]:
    """The row's evaluator scored on reconstructions of training images drawn (with replacement) by its seed."""
    config = config_from_dict(yaml.safe_load(done["config"]))
    model = vaegen.load(Path(done["samples"]).parent, device)
    splits = load_splits(config.data, config.train.seed)
    images, labels = splits.train.images, splits.train.labels
    evaluator = run_evaluator(config, splits, device)

    @torch.no_grad()
    def reconstructions(n: int, generator: torch.Generator) -> torch.Tensor:
        picked = torch.randint(len(images), (n,), generator=generator)
        x = to_input(images[picked], device)
        return model.reconstruct(x, labels[picked].to(device) if model.model.is_conditional else None)

    scores = evaluator.score(reconstructions, sampler="reconstructions of training images")
    return {key: value for key, value in scores.items() if key.startswith(("fd_", "kd_")) and not key.endswith("_std")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the ablation's --out folder")
    parser.add_argument("--rows", required=True, help="comma-separated rows of models that reconstruct")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    for name in (name.strip() for name in args.rows.split(",")):
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        done = json.loads((args.out / f"{slug}.json").read_text())
        scores = floor(done, device)
        sampled = done["best"]["metrics"]
        print(f"{name}: reconstructions FD {scores['fd_efficientnet_lite0']:.1f}, KID {scores['kd_efficientnet_lite0']:.3f} "
              f"(its samples: FD {sampled['fd_efficientnet_lite0']:.1f}, KID {sampled['kd_efficientnet_lite0']:.3f})", flush=True)


if __name__ == "__main__":
    main()
