"""The family comparison: VAEs against GAN, diffusion and flow baselines on one protocol, at 20 epochs and at equal
training time.

    python scripts/families.py                                   # 32 px, CPU; resumable (finished rows are reused)
    python scripts/families.py --rows "best VAE recipe,WGAN-GP" --no-record    # a quick look at two rows
    python scripts/families.py --device cuda --size 96 --epochs 100

Every row trains configs/train_apples.yaml changed only as the row says (the protocol of scripts/ablate.py: same seed,
data and evaluation — Fréchet and kernel distance, precision/recall/density/coverage on EfficientNet-Lite0 features of
--num-samples generated images against all real images, once, after the last epoch) twice. At equal training time:
the budget is the training time (the optimizer steps, not the evaluation) of the "best VAE recipe" row's --epochs
epochs; every other row trains one epoch, which measures its seconds per epoch, and continues (resumed, exactly) to
the whole epochs that fit the budget (at least 2). Then at --epochs epochs (the same run where that is its budget).
Budget runs go first: the table that answers "which family, for my time" fills before the slower one.
Rows in RESAMPLED train nothing: they score another row's model with other sampling settings (a diffusion model at
another step count). Sampling time per image: the model drawing 200 images in batches of 100 on the row's device,
after a warm-up batch. The tables and a sample grid per row replace the family section of docs/results.md for
--size (32 px: the first one; another size: its own); rows not run yet are listed as pending.
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

from ablate import BEST, default_data, number, protocol_arguments, relative, row_config, section_markers, write_section  # noqa: E402

from vaegen.config import config_from_dict  # noqa: E402
from vaegen.training.loop import RunPaths, train  # noqa: E402

# configs/train_apples_dcgan.yaml and _wgan_gp.yaml at the table's size (tests/test_best_config.py keeps them in step)
DCGAN = {"model.name": "dcgan", "model.latent_dim": 128, "model.widths": [64, 128, 256], "model.gan_loss": "non_saturating",
         "model.critic_steps": 1, "optim.lr": 2e-4, "optim.betas": [0.5, 0.999], "train.ema": 0.999}
WGAN_GP = {**DCGAN, "model.gan_loss": "wgan_gp", "model.critic_steps": 5, "model.gradient_penalty": 10.0, "optim.lr": 1e-4,
           "optim.betas": [0.0, 0.9]}
# configs/train_apples_ddpm.yaml's U-Net and sampler (DDIM, 50 steps) and configs/train_apples_realnvp.yaml's flow
DDPM = {"model.name": "ddpm", "model.widths": [32, 64, 64], "model.layers_per_block": 1, "model.attention": True,
        "model.noise_schedule": "cosine", "model.prediction": "epsilon", "model.diffusion_sampler": "ddim",
        "model.sample_steps": 50, "optim.lr": 1e-3, "optim.grad_clip": 1.0, "train.ema": 0.999}
REALNVP = {"model.name": "realnvp", "model.flow_scales": 3, "model.flow_couplings": 3, "model.flow_width": 32,
           "model.flow_blocks": 2, "optim.lr": 1e-3}
ROWS: dict[str, dict[str, object]] = {
    "best VAE recipe": BEST,
    "DCGAN": DCGAN,
    "WGAN-GP": WGAN_GP,
    "LSGAN": {**DCGAN, "model.gan_loss": "lsgan"},
    "RealNVP": REALNVP,
    "DDPM (DDIM 50 steps)": DDPM,
    "VAE (reference)": {},
    "hinge + spectral norm": {**DCGAN, "model.gan_loss": "hinge", "model.spectral_norm": True},
}
# a row that scores another row's trained model with other sampling settings (its family's sampling_keys):
# {row: (base row, {model key: value})}
RESAMPLED: dict[str, tuple[str, dict[str, object]]] = {
    "DDPM (DDIM 10 steps)": ("DDPM (DDIM 50 steps)", {"sample_steps": 10}),
    "DDPM (DDIM 250 steps)": ("DDPM (DDIM 50 steps)", {"sample_steps": 250}),
    "DDPM (DDIM 50 steps; η = 1)": ("DDPM (DDIM 50 steps)", {"ddim_eta": 1.0}),  # DDPM's noise afresh at each step
    "DDPM (1000 steps)": ("DDPM (DDIM 50 steps)", {"diffusion_sampler": "ddpm"}),  # ancestral, every step (Ho et al.)
}
BUDGET_ROW = "best VAE recipe"


def slug_of(name: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def training_seconds(run_dir: Path, train_images: int) -> float:
    """The optimizer steps' seconds of a finished run: each epoch's training images over its images per second."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sum(train_images / row["images_per_s"] for row in rows)


@torch.no_grad()
def sampling_seconds_per_image(best_dir: Path, device: str, sampling: dict | None = None) -> float:
    import vaegen

    model = vaegen.load(best_dir, device, sampling=sampling or None)
    labels = (torch.arange(100) % len(model.classes)).tolist() if model.model.is_conditional else None
    model.sample(100, seed=0, labels=labels)  # warm-up: allocations, lazy kernels
    started = time.perf_counter()
    for seed in (1, 2):
        model.sample(100, seed=seed, labels=labels)
    return (time.perf_counter() - started) / 200


class Probed(Exception):
    """Stops a budget run after its first epoch, which measured its seconds per epoch."""


def train_row(args, name: str, epochs: int | None, tag: str, reuse_only: bool = False) -> dict | None:
    """Train (or reuse, when its settings are unchanged) row `name` for `epochs` epochs, or with `epochs` None for
    the epochs that fit args.budget; its result record (None with `reuse_only` and no finished run)."""
    slug = slug_of(f"{name} {tag}")
    done_file = args.out / f"{slug}.json"
    if done_file.is_file() and not args.fresh:
        done = json.loads(done_file.read_text())
        if done["changes"] == json.dumps(ROWS[name], sort_keys=True) and done["protocol"] == protocol_of(args, tag):
            print(f"=== {name} ({tag}): reusing {done_file}", flush=True)
            return done
    if reuse_only:
        return None
    probe = epochs is None
    first = {"output.checkpoint_every": 1} if probe else {}  # the probe's epoch is resumed from
    config = row_config(argparse.Namespace(**{**vars(args), "epochs": 1000 if probe else epochs}), {**ROWS[name], **first}, args.out, slug)
    paths = RunPaths.for_config(config, slug)
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    shutil.rmtree(paths.best_dir, ignore_errors=True)
    print(f"\n=== {name} ({tag}{'' if probe else f', {epochs} epochs'})", flush=True)
    started = time.perf_counter()
    if probe:  # one epoch, unevaluated (1000 epochs, evaluated every 1000th), then the epochs that fit the budget
        try:
            train(config, paths, on_epoch=stop_after_the_first)
        except Probed:
            pass
        epochs = max(2, int(args.budget // training_seconds(paths.run_dir, args.train_images)))
        config = row_config(argparse.Namespace(**{**vars(args), "epochs": epochs}), ROWS[name], args.out, slug)
        train(config, paths, resume=True)
    else:
        train(config, paths)
    result = {"row": name, "tag": tag, "slug": slug, "epochs": epochs, "seconds": time.perf_counter() - started,
              "train_seconds": training_seconds(paths.run_dir, args.train_images), "best": json.loads((paths.best_dir / "metrics.json").read_text()),
              "samples": str(paths.best_dir / "samples.png"), "changes": json.dumps(ROWS[name], sort_keys=True),
              "protocol": protocol_of(args, tag), "config": config.to_yaml(), "sample_seconds": sampling_seconds_per_image(paths.best_dir, args.device)}
    done_file.write_text(json.dumps(result, indent=2))
    print(f"=== {name} ({tag}): FD {result['best']['value']:.1f}, {epochs} epochs, {result['train_seconds']:.0f} s of steps", flush=True)
    return result


def stop_after_the_first(row: dict, improved: bool) -> None:
    raise Probed


def protocol_of(args, tag: str) -> str:
    """What a finished row must share with this invocation to be reused."""
    budget = f", budget {args.budget:.0f} s" if tag == "budget" else ""
    return f"{args.device}, {args.size} px, {args.epochs} epochs, {args.num_samples} samples, {args.data}, {args.recipe}{budget}"


def resample_row(args, name: str, base: dict, reuse_only: bool = False) -> dict | None:
    """Score `base`'s model with RESAMPLED[name]'s sampling settings, on the same protocol; a grid of its samples.
    With `reuse_only`, only a finished result (None if there is none)."""
    import vaegen
    from vaegen.data.dataset import load_splits
    from vaegen.evaluation.frechet import run_evaluator, score_model
    from vaegen.plots import image_grid, save_png

    _, sampling = RESAMPLED[name]
    slug = slug_of(f"{name} {base['tag']}")
    done_file = args.out / f"{slug}.json"
    if done_file.is_file() and not args.fresh and json.loads(done_file.read_text()).get("base_config") == base["config"]:
        print(f"=== {name} ({base['tag']}): reusing {done_file}", flush=True)
        return json.loads(done_file.read_text())
    if reuse_only:
        return None
    print(f"=== {name} ({base['tag']}): the {RESAMPLED[name][0]} row's model, sampled with {sampling}", flush=True)
    best_dir = Path(base["samples"]).parent
    config = config_from_dict(yaml.safe_load(base["config"]))
    model = vaegen.load(best_dir, args.device, sampling=sampling)
    evaluator = run_evaluator(config, load_splits(config.data, config.train.seed), torch.device(args.device))
    scores = score_model(evaluator, model.model, config.eval.temperature, None)
    scores.pop("protocol")
    out = args.out / "best" / slug
    out.mkdir(parents=True, exist_ok=True)
    save_png(image_grid(model.sample(config.eval.num_grid, seed=0)), out / "samples.png")
    criterion = base["best"]["criterion"]
    result = {**base, "row": name, "slug": slug, "base_config": base["config"], "samples": str(out / "samples.png"),
              "best": {**base["best"], "value": scores[criterion], "metrics": {**base["best"]["metrics"], **scores}},
              "sample_seconds": sampling_seconds_per_image(best_dir, args.device, sampling)}
    done_file.write_text(json.dumps(result, indent=2))
    return result


def budget_epochs(result: dict, budget_seconds: float, cap: int) -> int:
    """The whole epochs of a row that fit in `budget_seconds` of training, at its measured seconds per epoch."""
    per_epoch = result["train_seconds"] / result["epochs"]
    return max(1, min(cap, int(budget_seconds // per_epoch)))


def main() -> None:
    parser = protocol_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--rows", default=",".join([*ROWS, *RESAMPLED]), help=f"comma-separated subset of: {', '.join([*ROWS, *RESAMPLED])}")
    parser.add_argument("--recipe", type=Path, default=REPO / "configs" / "train_apples.yaml")
    parser.add_argument("--max-budget-epochs", type=int, default=200, help="at most this many epochs in the equal-time table")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vaegen-families"))
    parser.add_argument("--no-record", action="store_true", help="print the tables, leave docs/results.md alone")
    parser.add_argument("--fresh", action="store_true", help="retrain rows already finished in --out")
    parser.add_argument("--skip", default="", help="'epochs' or 'budget': fill only the other table; rows this table finished before still show")
    args = parser.parse_args()
    args.data = (args.data or default_data()).resolve()
    args.section = ""
    args.skip = {tag.strip() for tag in args.skip.split(",") if tag.strip()}
    names = [name.strip() for name in args.rows.split(",")]
    unknown = [name for name in names if name not in ROWS and name not in RESAMPLED]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; choose from {[*ROWS, *RESAMPLED]}")
    args.out.mkdir(parents=True, exist_ok=True)
    from vaegen.data.dataset import load_splits

    args.train_images = len(load_splits(row_config(args, {}, args.out, "probe").data, seed=0).train.images)
    reference = train_row(args, BUDGET_ROW, args.epochs, "epochs")
    args.budget = budget = reference["train_seconds"]
    tables = {"budget": {}, "epochs": {}}
    names = [BUDGET_ROW, *(name for name in names if name != BUDGET_ROW)]  # the yardstick is in every table
    trained = [name for name in names if name in ROWS]
    for tag in ("budget", "epochs"):
        for name in trained:
            if name == BUDGET_ROW:
                base = reference
            elif tag == "epochs" and tables["budget"].get(name, {}).get("epochs") == args.epochs:
                base = tables["budget"][name]  # its budget was --epochs epochs: the same run
            else:
                base = train_row(args, name, None if tag == "budget" else args.epochs, tag, reuse_only=tag in args.skip)
            if base is None:
                continue
            tables[tag][name] = base
            for extra in (n for n in names if RESAMPLED.get(n, ("",))[0] == name):
                if (row := resample_row(args, extra, base, reuse_only=tag in args.skip)) is not None:
                    tables[tag][extra] = row
    tables = {tag: list(rows.values()) for tag, rows in tables.items()}
    text = render(tables, args, budget, names)
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


def render(tables: dict[str, list[dict]], args, budget: float, names: list[str]) -> str:
    command = f"python scripts/families.py --device {args.device} --size {args.size} --epochs {args.epochs}"
    if args.num_samples != 2000:
        command += f" --num-samples {args.num_samples}"
    if args.data != default_data():
        command += f" --data {relative(args.data)}"
    head = (f"Measured {date.today()} on {device_name(args.device)}, torch {torch.__version__}: {args.size} px, batch 64, "
            f"seed 0, data {args.data.name} (all its images are the reference), {args.num_samples} samples scored once, "
            f"after the last epoch. Command: `{command}`.")
    legend = [f"- **{name}**: " + (", ".join(f"`{k}: {v}`" for k, v in ROWS[name].items()) or f"{relative(args.recipe)} as it is")
              for name in dict.fromkeys(r["row"] for r in tables["epochs"]) if name in ROWS]
    legend += [f"- **{name}**: the {base} row's model, sampled with {', '.join(f'`{k} = {v}`' for k, v in attrs.items())}"
               for name, (base, attrs) in RESAMPLED.items() if any(r["row"] == name for r in tables["epochs"])]
    def pending(tag: str) -> list[str]:
        missing = [name for name in names if name not in {r["row"] for r in tables[tag]}]
        return ["", f"Not measured yet: {', '.join(missing)}."] if missing else []

    return "\n".join([
        head, "", f"### At equal training time: {budget / 60:.1f} min of optimizer steps (the {BUDGET_ROW} row's "
        f"{args.epochs} epochs)", "", *table(tables["budget"], args.size), *pending("budget"), "",
        f"### At {args.epochs} epochs", "", *table(tables["epochs"], args.size), *pending("epochs"), "",
        "Training time: the optimizer steps alone (each epoch's training images over its measured images per second), "
        "not the evaluation; sampling / image: 200 images drawn in batches of 100 after a warm-up batch.", "",
        f"What each row changes in {relative(args.recipe)}:", "", *legend,
    ])


def record(text: str, tables: dict[str, list[dict]], args) -> None:
    images = REPO / "docs" / "img" / "families"
    images.mkdir(parents=True, exist_ok=True)
    for result in (r for rows in tables.values() for r in rows):
        shutil.copyfile(result["samples"], images / f"{args.size}px-{result['slug']}.png")
    path = write_section(*section_markers("families", args.size), f"## Model families at {args.size} px\n\n{text}")
    print(f"wrote the tables to {path} and the grids to {images}/")


if __name__ == "__main__":
    main()
