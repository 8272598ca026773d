"""The family comparison: VAEs against GAN, diffusion and flow baselines on one protocol, at 20 epochs and at equal
training time.

    python scripts/families.py                                   # 32 px, CPU; resumable (finished rows are reused)
    python scripts/families.py --rows "best VAE recipe,WGAN-GP" --no-record    # a quick look at two rows
    python scripts/families.py --device cuda --size 96 --epochs 100

Every row trains configs/train_apples.yaml changed only as the row says (the protocol of scripts/ablate.py: same seed,
data and evaluation — Fréchet and kernel distance, precision/recall/density/coverage on EfficientNet-Lite0 features of
--num-samples generated images against all real images, once, after the last epoch), first for --epochs epochs, then
for as many epochs as fit the budget: the training time (the optimizer steps, not the evaluation) the "best VAE
recipe" row took for its --epochs epochs. A row whose budget is its --epochs is the same run. Rows marked "(sampler)"
train nothing: they score another row's model with other sampling settings (a diffusion model at more steps).
Sampling time per image: the model drawing 200 images in batches of 100 on the row's device, after one warm-up batch.
The tables and one sample grid per row replace the family section of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from ablate import BEST, number, relative, row_config  # noqa: E402

from vaegen.config import config_from_dict  # noqa: E402
from vaegen.training.loop import RunPaths, train  # noqa: E402

# configs/train_apples_dcgan.yaml and _wgan_gp.yaml at the table's size (tests/test_best_config.py keeps them in step)
DCGAN = {"model.name": "dcgan", "model.latent_dim": 128, "model.widths": [64, 128, 256], "model.gan_loss": "non_saturating",
         "model.critic_steps": 1, "optim.lr": 2e-4, "optim.betas": [0.5, 0.999], "train.ema": 0.999}
WGAN_GP = {**DCGAN, "model.gan_loss": "wgan_gp", "model.critic_steps": 5, "model.gradient_penalty": 10.0, "optim.lr": 1e-4,
           "optim.betas": [0.0, 0.9]}
ROWS: dict[str, dict[str, object]] = {
    "VAE (reference)": {},
    "best VAE recipe": BEST,
    "DCGAN": DCGAN,
    "LSGAN": {**DCGAN, "model.gan_loss": "lsgan"},
    "WGAN-GP": WGAN_GP,
    "hinge + spectral norm": {**DCGAN, "model.gan_loss": "hinge", "model.spectral_norm": True},
}
# a row that scores another row's trained model with its module's sampling attributes changed: {row: (base, attributes)}
RESAMPLED: dict[str, tuple[str, dict[str, object]]] = {}
BUDGET_ROW = "best VAE recipe"
START, END = "<!-- families:start -->", "<!-- families:end -->"


def slug_of(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def training_seconds(run_dir: Path, train_images: int) -> float:
    """The optimizer steps' seconds of a finished run: each epoch's training images over its images per second."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sum(train_images / row["images_per_s"] for row in rows)


@torch.no_grad()
def sampling_seconds_per_image(best_dir: Path, device: str, attributes: dict | None = None) -> float:
    import vaegen

    model = vaegen.load(best_dir, device)
    for name, value in (attributes or {}).items():
        setattr(model.model, name, value)
    labels = (torch.arange(100) % len(model.classes)).tolist() if model.model.is_conditional else None
    model.sample(100, seed=0, labels=labels)  # warm-up: allocations, lazy kernels
    started = time.perf_counter()
    for seed in (1, 2):
        model.sample(100, seed=seed, labels=labels)
    return (time.perf_counter() - started) / 200


def train_row(args, name: str, epochs: int, tag: str) -> dict:
    """Train (or reuse, when its settings are unchanged) row `name` for `epochs` epochs; its result record."""
    slug = slug_of(f"{name} {tag}")
    protocol = argparse.Namespace(**{**vars(args), "epochs": epochs})
    config = row_config(protocol, ROWS[name], args.out, slug)
    done_file = args.out / f"{slug}.json"
    if done_file.is_file() and not args.fresh:
        done = json.loads(done_file.read_text())
        if config_from_dict(yaml.safe_load(done["config"])).to_yaml() == config.to_yaml():
            print(f"=== {name} ({tag}): reusing {done_file}", flush=True)
            return done
    paths = RunPaths.for_config(config, slug)
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    shutil.rmtree(paths.best_dir, ignore_errors=True)
    print(f"\n=== {name} ({tag}, {epochs} epochs)", flush=True)
    started = time.perf_counter()
    train(config, paths)
    result = {"row": name, "tag": tag, "slug": slug, "epochs": epochs, "seconds": time.perf_counter() - started,
              "train_seconds": training_seconds(paths.run_dir, args.train_images), "best": json.loads((paths.best_dir / "metrics.json").read_text()),
              "samples": str(paths.best_dir / "samples.png"), "config": config.to_yaml(),
              "sample_seconds": sampling_seconds_per_image(paths.best_dir, args.device)}
    done_file.write_text(json.dumps(result, indent=2))
    print(f"=== {name} ({tag}): FD {result['best']['value']:.1f}, {result['train_seconds']:.0f} s of steps", flush=True)
    return result


def resample_row(args, name: str, base: dict) -> dict:
    """Score `base`'s model with RESAMPLED[name]'s sampling attributes, on the same protocol; a grid of its samples."""
    import vaegen
    from vaegen.data.dataset import load_splits
    from vaegen.evaluation.frechet import run_evaluator, score_model
    from vaegen.plots import image_grid, save_png

    _, attributes = RESAMPLED[name]
    slug = slug_of(f"{name} {base['tag']}")
    done_file = args.out / f"{slug}.json"
    if done_file.is_file() and not args.fresh and json.loads(done_file.read_text()).get("base_config") == base["config"]:
        print(f"=== {name} ({base['tag']}): reusing {done_file}", flush=True)
        return json.loads(done_file.read_text())
    best_dir = Path(base["samples"]).parent
    config = config_from_dict(yaml.safe_load(base["config"]))
    model = vaegen.load(best_dir, args.device)
    for key, value in attributes.items():
        setattr(model.model, key, value)
    evaluator = run_evaluator(config, load_splits(config.data, config.train.seed), torch.device(args.device))
    scores = score_model(evaluator, model.model, config.eval.temperature, None)
    scores.pop("protocol")
    out = args.out / "best" / slug
    out.mkdir(parents=True, exist_ok=True)
    save_png(image_grid(model.sample(config.eval.num_grid, seed=0)), out / "samples.png")
    criterion = base["best"]["criterion"]
    result = {**base, "row": name, "slug": slug, "base_config": base["config"], "samples": str(out / "samples.png"),
              "best": {**base["best"], "value": scores[criterion], "metrics": {**base["best"]["metrics"], **scores}},
              "sample_seconds": sampling_seconds_per_image(best_dir, args.device, attributes)}
    done_file.write_text(json.dumps(result, indent=2))
    return result


def budget_epochs(result: dict, budget_seconds: float, cap: int) -> int:
    """The whole epochs of a row that fit in `budget_seconds` of training, at its measured seconds per epoch."""
    per_epoch = result["train_seconds"] / result["epochs"]
    return max(1, min(cap, int(budget_seconds // per_epoch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--rows", default=",".join([*ROWS, *RESAMPLED]), help=f"comma-separated subset of: {', '.join([*ROWS, *RESAMPLED])}")
    parser.add_argument("--recipe", type=Path, default=REPO / "configs" / "train_apples.yaml")
    parser.add_argument("--max-budget-epochs", type=int, default=200, help="at most this many epochs in the equal-time table")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vaegen-families"))
    parser.add_argument("--no-record", action="store_true", help="print the tables, leave docs/results.md alone")
    parser.add_argument("--fresh", action="store_true", help="retrain rows already finished in --out")
    args = parser.parse_args()
    from ablate import default_data

    args.data = (args.data or default_data()).resolve()
    args.section = ""
    names = [name.strip() for name in args.rows.split(",")]
    unknown = [name for name in names if name not in ROWS and name not in RESAMPLED]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; choose from {[*ROWS, *RESAMPLED]}")
    args.out.mkdir(parents=True, exist_ok=True)
    from vaegen.data.dataset import load_splits

    args.train_images = len(load_splits(row_config(args, {}, args.out, "probe").data, seed=0).train.images)
    budget = train_row(args, BUDGET_ROW, args.epochs, "epochs")["train_seconds"]
    tables = {"epochs": [], "budget": []}
    for name in names:
        if name in RESAMPLED:
            continue
        fixed = train_row(args, name, args.epochs, "epochs")
        epochs = budget_epochs(fixed, budget, args.max_budget_epochs)
        timed = fixed if epochs == args.epochs else train_row(args, name, epochs, "budget")
        tables["epochs"].append(fixed)
        tables["budget"].append(timed)
        for extra in (n for n in names if RESAMPLED.get(n, ("",))[0] == name):
            tables["epochs"].append(resample_row(args, extra, fixed))
            tables["budget"].append(resample_row(args, extra, timed))
    text = render(tables, args, budget)
    print("\n" + text)
    if not args.no_record:
        record(text, tables, args)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.machine()} CPU x{torch.get_num_threads()}"


def table(results: list[dict], size: int) -> list[str]:
    lines = ["| row | epochs | FD (EfficientNet-Lite0) | KID | precision | recall | density | coverage | training time | "
             "sampling / image | samples |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for result in results:
        metrics = result["best"]["metrics"]
        shares = " | ".join(number(metrics.get(f"{name}_efficientnet_lite0"), ".2f") for name in ("precision", "recall", "density", "coverage"))
        lines.append(
            f"| {result['row']} | {result['epochs']} | {result['best']['value']:.1f} | {metrics['kd_efficientnet_lite0']:.3f} | "
            f"{shares} | {result['train_seconds'] / 60:.1f} min | {result['sample_seconds'] * 1000:.1f} ms | "
            f"![{result['row']}](img/families/{size}px-{result['slug']}.png) |"
        )
    return lines


def render(tables: dict[str, list[dict]], args, budget: float) -> str:
    command = f"python scripts/families.py --device {args.device} --size {args.size} --epochs {args.epochs}"
    if args.num_samples != 2000:
        command += f" --num-samples {args.num_samples}"
    if args.data != __import__("ablate").default_data():
        command += f" --data {relative(args.data)}"
    head = (f"Measured {date.today()} on {device_name(args.device)}, torch {torch.__version__}: {args.size} px, batch 64, "
            f"seed 0, data {args.data.name} (all its images are the reference), {args.num_samples} samples scored once, "
            f"after the last epoch. Command: `{command}`.")
    legend = [f"- **{name}**: " + (", ".join(f"`{k}: {v}`" for k, v in ROWS[name].items()) or f"{relative(args.recipe)} as it is")
              for name in dict.fromkeys(r["row"] for r in tables["epochs"]) if name in ROWS]
    legend += [f"- **{name}**: the {base} row's model, sampled with {', '.join(f'`{k} = {v}`' for k, v in attrs.items())}"
               for name, (base, attrs) in RESAMPLED.items() if any(r["row"] == name for r in tables["epochs"])]
    return "\n".join([
        head, "", f"### At {args.epochs} epochs", "", *table(tables["epochs"], args.size), "",
        f"### At equal training time: {budget / 60:.1f} min of optimizer steps (the {BUDGET_ROW} row's {args.epochs} epochs)", "",
        *table(tables["budget"], args.size), "",
        "Training time: the optimizer steps alone (each epoch's training images over its measured images per second), "
        "not the evaluation; sampling / image: 200 images drawn in batches of 100 after a warm-up batch.", "",
        f"What each row changes in {relative(args.recipe)}:", "", *legend,
    ])


def record(text: str, tables: dict[str, list[dict]], args) -> None:
    images = REPO / "docs" / "img" / "families"
    images.mkdir(parents=True, exist_ok=True)
    for result in (r for rows in tables.values() for r in rows):
        shutil.copyfile(result["samples"], images / f"{args.size}px-{result['slug']}.png")
    path = REPO / "docs" / "results.md"
    content = path.read_text()
    section = f"{START}\n## Model families at {args.size} px\n\n{text}\n{END}"
    if START in content:
        before, rest = content.split(START, 1)
        content = before + section + rest.split(END, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(content)
    print(f"wrote the tables to {path} and the grids to {images}/")


if __name__ == "__main__":
    main()
