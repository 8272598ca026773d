"""Freeze what the 0.1.0 release writes, for tests/test_release_compat.py.

    cd /tmp/old && PYTHONPATH=/tmp/old/src /work/main/.venv/bin/python \\
        /work/main/scripts/make_release_fixtures.py --out /work/main/tests/fixtures/release_0_1_0

Run it with the release's code (a checkout of the release commit on PYTHONPATH), not with a
working tree that has moved on: the point is to keep what *that* code wrote. It trains two tiny
runs on the bundled data/apples_sample (16 px, latent 8, widths [8, 16], 2 epochs, CPU):

    vae-gmm    unconditional, sampler.name: gmm (best_models/vae-gmm/sampler.safetensors)
    cvae-ema   conditional (model.conditional: onehot), sampler.name: prior, train.ema: 0.9

and keeps, for each, best_models/<run>/ whole and logs/<run>/{config.yaml, metrics.jsonl,
checkpoints/last.pt, checkpoints/config.yaml} (no TensorBoard files or PNGs). Every path in the
frozen configs is relative (data/apples_sample, cache, logs, best_models): the tests copy the
folder, work from the copy and point data.root at the repository's sample.

It then records what the release computes from those files, in expected/:

    <run>-samples.safetensors          vaegen.load(best_models/<run>).sample(8, seed=0) (cvae-ema: labels LABELS)
    <run>-resumed-epoch3.safetensors   last.pt's weights ("model.*"; "ema.*" too for cvae-ema) after
                                       `vaegen train --resume logs/<run> --set train.epochs=3`, run on a
                                       copy of the frozen folder exactly as the tests run it
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

import vaegen
from vaegen.apps.cli import main as vaegen_main
from vaegen.checkpoint import load_training_state

REPO = Path(__file__).resolve().parents[1]
DATA = "data/apples_sample"  # as the frozen configs say it, relative to the folder a run starts from
LABELS = [0, 1, 2, 0, 1, 2, 0, 1]
RESUME_EPOCHS = 3

# what each run adds to the tiny base config below
RUNS = {
    "vae-gmm": {"sampler": {"name": "gmm"}},
    "cvae-ema": {"model": {"conditional": "onehot"}, "sampler": {"name": "prior"}, "train": {"ema": 0.9}},
}


def run_config(name: str) -> dict:
    """A config that trains in seconds on 2 CPU cores, every path relative."""
    config = {
        "data": {"root": DATA, "image_size": 16, "val_fraction": 0.2, "cache_dir": "cache"},
        "model": {"latent_dim": 8, "widths": [8, 16]},
        "beta": {"schedule": "warmup", "max": 1.0, "warmup": 2},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 32, "seed": 0, "device": "cpu"},
        "eval": {"every": 1, "num_grid": 12, "backbone": "none"},
        "output": {"run_name": name, "logs_dir": "logs", "best_dir": "best_models", "select": "val_nelbo"},
    }
    for section, values in RUNS[name].items():
        config.setdefault(section, {}).update(values)
    return config


def resume_arguments(run: str, data_root: Path, cache_dir: Path) -> list[str]:
    """The command line the tests resume a frozen run with (from a copy of the fixture folder)."""
    return ["train", "--resume", f"logs/{run}", "--set", f"train.epochs={RESUME_EPOCHS}",
            "--set", f"data.root={data_root}", "--set", f"data.cache_dir={cache_dir}"]


def train(workspace: Path, name: str) -> None:
    config_file = workspace / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(run_config(name), sort_keys=False))
    with contextlib.chdir(workspace):
        code = vaegen_main(["train", "--config", config_file.name])
    if code != 0:
        raise SystemExit(f"training {name} exited with {code}")


def freeze(workspace: Path, name: str, out: Path) -> None:
    """Copy the files the compatibility promise covers; TensorBoard events and log PNGs are left out."""
    shutil.copytree(workspace / "best_models" / name, out / "best_models" / name)
    for part in ["config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/config.yaml"]:
        target = out / "logs" / name / part
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(workspace / "logs" / name / part, target)


def expected_samples(out: Path, name: str) -> torch.Tensor:
    model = vaegen.load(out / "best_models" / name)
    labels = LABELS if model.is_conditional else None
    with torch.no_grad():
        return model.sample(len(LABELS), labels=labels, seed=0)


def expected_resume(out: Path, name: str, data_root: Path) -> dict[str, torch.Tensor]:
    """Resume a copy of the frozen run as the tests do and return last.pt's weights, prefixed model. and ema."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "fixtures"
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns("expected"))
        with contextlib.chdir(copy):
            code = vaegen_main(resume_arguments(name, data_root, Path(scratch) / "cache"))
        if code != 0:
            raise SystemExit(f"resuming {name} exited with {code}")
        state = load_training_state(copy / "logs" / name / "checkpoints" / "last.pt")
    if state["epoch"] != RESUME_EPOCHS:
        raise SystemExit(f"resumed {name} stopped at epoch {state['epoch']}, not {RESUME_EPOCHS}")
    tensors = {f"model.{key}": value for key, value in state["model"].items()}
    if "ema" in state:
        tensors.update({f"ema.{key}": value for key, value in state["ema"]["module"].items()})
    return {key: value.contiguous() for key, value in tensors.items()}


README = """\
# Release 0.1.0 fixtures

Files written by vaegen {version} (the release before the package redesign), kept so that
`tests/test_release_compat.py` holds later code to the promise that checkpoints written by this
release keep loading, resuming exactly, testing and sampling the same pixels. Do not edit them;
regenerate only from the release's own code:

    {command}

- `best_models/<run>/`: the best models as `vaegen train` exported them (all files).
- `logs/<run>/`: `config.yaml`, `metrics.jsonl`, `checkpoints/last.pt`, `checkpoints/config.yaml`
  (TensorBoard files and PNGs left out).
- `expected/<run>-samples.safetensors`: `vaegen.load(best_models/<run>).sample(8, seed=0)`
  (`cvae-ema` with labels {labels}), key `samples`.
- `expected/<run>-resumed-epoch3.safetensors`: `last.pt`'s weights after
  `vaegen train --resume logs/<run> --set train.epochs={epochs}` (keys `model.*`, and `ema.*` for `cvae-ema`).

Runs: 16 px, latent 8, widths [8, 16], 2 epochs on `data/apples_sample`, CPU, selected on `val_nelbo`.
`vae-gmm` is unconditional with `sampler.name: gmm`; `cvae-ema` is conditional (`onehot`) with
`sampler.name: prior` and `train.ema: 0.9`. Paths in the configs are relative: run from a copy of
this folder with `--set data.root=<repository>/data/apples_sample`.
"""

COMMAND = (
    "cd /tmp/old && PYTHONPATH=/tmp/old/src /work/main/.venv/bin/python "
    "/work/main/scripts/make_release_fixtures.py --out /work/main/tests/fixtures/release_0_1_0"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the fixture folder to create (must not exist)")
    parser.add_argument("--data", type=Path, default=REPO / DATA, help="the bundled sample (default: %(default)s)")
    args = parser.parse_args()
    out, data_root = args.out.resolve(), args.data.resolve()
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first (fixtures are regenerated whole)")
    print(f"vaegen {vaegen.__version__} from {Path(vaegen.__file__).parent}")

    with tempfile.TemporaryDirectory() as scratch:
        workspace = Path(scratch)
        shutil.copytree(data_root, workspace / DATA)
        for name in RUNS:
            train(workspace, name)
            freeze(workspace, name, out)

    expected = out / "expected"
    expected.mkdir()
    for name in RUNS:
        save_file({"samples": expected_samples(out, name).contiguous()}, str(expected / f"{name}-samples.safetensors"))
        resumed = expected_resume(out, name, data_root)
        save_file(resumed, str(expected / f"{name}-resumed-epoch{RESUME_EPOCHS}.safetensors"))
    readme = README.format(version=vaegen.__version__, command=COMMAND, labels=LABELS, epochs=RESUME_EPOCHS)
    (out / "README.md").write_text(readme)
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"wrote {out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
