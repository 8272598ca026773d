"""Sample-quality ablation: the reference recipe against each improvement, one invocation, one protocol.

    python scripts/ablate.py                                  # 32 px, 20 epochs, CPU (under an hour on 2 cores)
    python scripts/ablate.py --device cuda --size 96 --epochs 100
    python scripts/ablate.py --rows reference,+gmm --epochs 5 --no-record    # a quick look
    python scripts/ablate.py --data ../shared/data/impressionism --recipe configs/train_impressionism.yaml \
        --rows "reference,best recipe" --section impressionism     # another dataset, its own section

Every row trains the recipe (`configs/train_apples.yaml` unless --recipe) with the same seed, data, epochs and evaluation
protocol (Fréchet and kernel distance on EfficientNet-Lite0 features of --num-samples generated
images against all real images, once, after the last epoch), changing only what the row names.
One evaluation, not the best of several: choosing an epoch by the reported score would flatter
every row (and each row's best of four evaluations was its last one anyway, measured 2026-11-23).
The table (distance, KID, precision/recall/density/coverage, reconstruction MSE per image, copy ratio,
wall time, device) and one sample grid per row replace the ablation section of docs/results.md for --size (--section
NAME: a section of its own, between <!-- ablation:NAME:start --> and <!-- ablation:NAME:end -->).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vaegen.config import config_from_dict, read_yaml, set_key_path  # noqa: E402
from vaegen.data.dataset import load_splits  # noqa: E402
from vaegen.training.loop import RunPaths, train  # noqa: E402

# what each row changes in the reference recipe (key path: value)
CALIBRATED = {"loss.recon": "gaussian", "beta.schedule": "constant", "beta.max": 1.0}
RESIDUAL_EMA = {"model.name": "res_vae", "model.blocks": 1, "train.ema": 0.999}
ADVERSARIAL = {"adversarial.enabled": True, "adversarial.start_epoch": 5}
# the reference's lr (2e-4) is slow for a 20-epoch budget; this row shows what a faster one buys on its own
FAST_LR = {"optim.lr": 1e-3}
# configs/train_apples_best.yaml at the ablation's budget (tests/test_best_config.py keeps the two in step)
BEST = {**CALIBRATED, "sampler.name": "gmm", "sampler.components": 25, **FAST_LR}
# configs/train_apples_vqvae.yaml, _vq_prior.yaml and _hvae.yaml at the ablation's budget (tests/test_best_config.py;
# the hierarchical VAE's KL warms up over 5 epochs, so its upper level is in use before the KL bites)
# (a full-covariance mixture over the 8 x 8 x 32 grid would hold 25 matrices of 2048²: diagonal ones)
VQVAE = {"model.name": "conv_vqvae", "model.widths": [64, 128], "model.codebook_size": 512, "model.code_dim": 32,
         "sampler.name": "gmm", "sampler.components": 25, "sampler.covariance": "diag", **FAST_LR}
VQ_PRIOR = {"model.name": "vq_prior", "model.prior_layers": 4, "model.prior_width": 128, "model.prior_heads": 4, "model.prior_dropout": 0.1, **FAST_LR}
HVAE = {"model.name": "hvae", "model.widths": [32, 64, 128], "model.blocks": 1, "model.levels": 2, "model.latent_channels": 16,
        **CALIBRATED, "beta.schedule": "warmup", "beta.warmup": 5, **FAST_LR}
# A mixture row needs no training of its own: the mixture is fitted after training by design (ex post),
# and a run is scored only after its last epoch, so the row fits it on its base row's checkpoint and
# scores it with the same protocol (exactly what training the row would give, at a fraction of the time)
POST_HOC = {"+gmm": "reference", "+calibrated decoder +gmm": "+calibrated decoder", "hierarchical VAE +gmm": "hierarchical VAE"}
ROWS: dict[str, dict[str, object]] = {
    "reference": {},
    "+gmm": {"sampler.name": "gmm"},
    "+calibrated decoder": CALIBRATED,
    "+calibrated decoder +gmm": {**CALIBRATED, "sampler.name": "gmm"},
    "+residual/EMA": RESIDUAL_EMA,
    "+adversarial": ADVERSARIAL,
    "all together": {**CALIBRATED, "sampler.name": "gmm", **RESIDUAL_EMA, **ADVERSARIAL},
    "+lr 1e-3": FAST_LR,
    # the CNN-against-RNN comparison: the reference with a bidirectional GRU over the rows as its encoder
    "GRU encoder": {"model.name": "gru_vae"},
    "best recipe": BEST,
    # the deterministic autoencoder (an RAE: β weighs ½‖z‖²) has no prior: it is sampled through the mixture
    "autoencoder +gmm": {"model.name": "conv_ae", "sampler.name": "gmm"},
    "VQ-VAE +gmm": VQVAE,
    "VQ-VAE +prior": VQ_PRIOR,
    "conditional VQ-VAE +gmm": {**VQVAE, "model.conditional": "embedding"},
    "conditional VQ-VAE +prior": VQ_PRIOR,
    "hierarchical VAE": HVAE,
    "hierarchical VAE +gmm": {**HVAE, "sampler.name": "gmm", "sampler.components": 25, "sampler.covariance": "diag"},
    "conditional hierarchical VAE": {**HVAE, "model.conditional": "embedding"},
}
# a second stage trains on the best model of its first stage's row (trained first, in the same --out); its wall time
# includes that row's
SECOND_STAGE = {"VQ-VAE +prior": "VQ-VAE +gmm", "conditional VQ-VAE +prior": "conditional VQ-VAE +gmm"}


def default_data() -> Path:
    shared = REPO.parent / "shared" / "data" / "apples"
    return shared if shared.is_dir() else REPO / "data" / "apples_sample"


def row_config(args, changes: dict[str, object], out: Path, slug: str):
    raw = read_yaml(args.recipe)
    protocol = {
        "data.root": str(args.data), "data.image_size": args.size, "train.epochs": args.epochs, "train.device": args.device,
        "eval.every": args.epochs, "eval.num_samples": args.num_samples, "eval.reference": "all", "eval.backbone": "efficientnet-lite0",
        "output.select": "fid", "output.logs_dir": str(out / "logs"), "output.best_dir": str(out / "best"), "output.run_name": slug,
        "output.checkpoint_every": args.epochs,
    }
    for key, value in {**protocol, **changes}.items():
        set_key_path(raw, key, value)
    return config_from_dict(raw, f"ablation row {slug}")


def stage_changes(name: str, out: Path) -> dict[str, object]:
    """A row's changes; a second stage's also name its first stage's best model."""
    if name not in SECOND_STAGE:
        return ROWS[name]
    first = re.sub(r"[^A-Za-z0-9]+", "-", SECOND_STAGE[name]).strip("-")
    return {**ROWS[name], "model.first_stage": str(out / "best" / first)}


def protocol_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every row of a table shares (this script's and scripts/families.py's)."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--data", type=Path, default=None)
    return parser


def main() -> None:
    parser = protocol_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    parser.add_argument("--recipe", type=Path, default=REPO / "configs" / "train_apples.yaml", help="the reference row's config")
    parser.add_argument("--section", default="", help="record into docs/results.md's section of this name (default: the apples ablation)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vaegen-ablation"))
    parser.add_argument("--no-record", action="store_true", help="print the table, leave docs/results.md alone")
    parser.add_argument("--fresh", action="store_true", help="retrain rows already finished in --out (default: reuse them)")
    args = parser.parse_args()
    args.data = (args.data or default_data()).resolve()
    names = [name.strip() for name in args.rows.split(",")]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; choose from {list(ROWS)}")

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.machine()} CPU x{torch.get_num_threads()}"
    results = []
    invocation_started, reused = time.perf_counter(), []
    for name in names:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        config = row_config(args, stage_changes(name, args.out), args.out, slug)
        paths = RunPaths.for_config(config, slug)
        # a finished row is kept (an interrupted ablation continues where it stopped) unless its settings changed
        done_file = args.out / f"{slug}.json"
        if done_file.is_file() and not args.fresh:
            done = json.loads(done_file.read_text())
            # compared through today's schema, so settings added since (at their defaults) do not force a retrain
            if config_from_dict(yaml.safe_load(done["config"])).to_yaml() == config.to_yaml():
                print(f"=== {name}: reusing {done_file}", flush=True)
                reused.append(name)
                results.append({**done, "samples": Path(done["samples"])})
                continue
        shutil.rmtree(paths.run_dir, ignore_errors=True)
        shutil.rmtree(paths.best_dir, ignore_errors=True)
        base = next((r for r in results if r["row"] == POST_HOC.get(name)), None)
        if base is not None:
            print(f"=== {name}: fitted on the best checkpoint of row {base['row']!r}", flush=True)
            started = time.perf_counter()
            best = score_with_mixture(config, Path(base["samples"]).parent, paths.best_dir)
            result = {"row": name, "slug": slug, "seconds": base["seconds"] + time.perf_counter() - started, "best": best,
                      "samples": str(paths.best_dir / "samples.png"), "config": config.to_yaml()}
            done_file.write_text(json.dumps(result, indent=2))
            results.append({**result, "samples": Path(result["samples"])})
            print(f"=== {name}: {best['criterion']} {best['value']:.1f} (prior {best['metrics'][best['criterion'] + '_prior']:.1f})", flush=True)
            continue
        print(f"\n=== {name}: {', '.join(f'{k}={v}' for k, v in ROWS[name].items()) or 'the recipe as it is'}", flush=True)
        first = next((r for r in results if r["row"] == SECOND_STAGE.get(name)), None)
        if name in SECOND_STAGE and first is None:
            sys.exit(f"row {name!r} trains on the model of row {SECOND_STAGE[name]!r}: list that row before it in --rows")
        started = time.perf_counter()
        train(config, paths)
        seconds = time.perf_counter() - started + (first["seconds"] if first else 0.0)
        best = json.loads((paths.best_dir / "metrics.json").read_text())
        result = {"row": name, "slug": slug, "seconds": seconds, "best": best, "samples": str(paths.best_dir / "samples.png"),
                  "config": config.to_yaml()}
        done_file.write_text(json.dumps(result, indent=2))
        results.append({**result, "samples": Path(result["samples"])})
        print(f"=== {name}: {best['criterion']} {best['value']:.1f} ({seconds:.0f} s)", flush=True)

    splits = load_splits(row_config(args, {}, args.out, "reference").data, seed=0)
    for result in results:
        result["copy_ratio"] = copy_ratio(result, results, args, splits)
    minutes = (time.perf_counter() - invocation_started) / 60
    total = (f"This invocation took {minutes:.1f} min; rows reused from an earlier one: {', '.join(reused)}." if reused
             else f"The whole invocation (every row, its evaluation and copy ratio) took {minutes:.1f} min.")
    print(total)
    table = render(results, args, device_name, total)
    print("\n" + table)
    if not args.no_record:
        record(table, results, args)


@torch.no_grad()
def copy_ratio(result: dict, results: list[dict], args, splits, count: int = 2000) -> float:
    """How close samples sit to the training images, against unseen real images: the median pixel distance
    from `count` samples to their nearest training image over the same median for the validation images.

    A density fitted to training codes can give back the training images themselves, which a feature
    distance rewards; a ratio falling towards 1 (or below) would say so. Above 1: samples are further
    from every training image than new real photos are (blur, or novelty).
    """
    import vaegen
    from vaegen.evaluation.frechet import eval_batch_size
    from vaegen.samplers.mixture import fit_model_density
    from vaegen.training.accel import resolve_device

    device = resolve_device(args.device)
    train_pixels = splits.train.images.to(device).flatten(1).float() / 255

    def nearest(pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.cdist(chunk, train_pixels).min(1).values for chunk in pixels.split(500)]).median()

    base = next((r for r in results if r["row"] == POST_HOC.get(result["row"])), result)
    model = vaegen.load(Path(base["samples"]).parent, device)
    if base is not result:  # the post-hoc mixture is refitted (seeded, so the same one)
        config = row_config(args, ROWS[result["row"]], args.out, result["slug"])
        batch = eval_batch_size(config.eval.batch_size, device)
        model.latent_density = fit_model_density(model, splits.train, config.sampler, config.train.seed, batch, device)
    labels = torch.arange(count) % len(model.classes) if model.model.is_conditional else None  # every class alike
    samples = model.sample(count, labels=labels, seed=1).flatten(1).float()
    return float(nearest(samples) / nearest(splits.val.images.to(device).flatten(1).float() / 255))


def score_with_mixture(config, trained: Path, out: Path) -> dict:
    """Fit `config.sampler` on the training codes of the model in `trained`; score mixture and prior; save a grid."""
    import vaegen
    from vaegen.evaluation.frechet import eval_batch_size, run_evaluator, score_model
    from vaegen.plots import image_grid, save_png
    from vaegen.samplers.mixture import fit_model_density
    from vaegen.training.accel import resolve_device

    device = resolve_device(config.train.device)
    model = vaegen.load(trained, device)
    splits = load_splits(config.data, config.train.seed)
    batch = eval_batch_size(config.eval.batch_size, device)
    density = fit_model_density(model, splits.train, config.sampler, config.train.seed, batch, device)
    evaluator = run_evaluator(config, splits, device)
    scores = score_model(evaluator, model, config.eval.temperature, None, density)
    trained_metrics = json.loads((trained / "metrics.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    model.latent_density = density
    save_png(image_grid(model.sample(config.eval.num_grid, seed=0)), out / "samples.png")
    criterion = trained_metrics["criterion"]
    return {"epoch": trained_metrics["epoch"], "criterion": criterion, "value": scores[criterion],
            "metrics": {**trained_metrics["metrics"], **{k: v for k, v in scores.items() if k != "protocol"}}}


def command_line(args) -> str:
    """The command that reproduces the table: the options this invocation set beyond the defaults."""
    options = f"--device {args.device} --size {args.size} --epochs {args.epochs}"
    if args.num_samples != 2000:
        options += f" --num-samples {args.num_samples}"
    if args.data != default_data():
        options += f" --data {relative(args.data)}"
    if args.recipe.resolve() != (REPO / "configs" / "train_apples.yaml"):
        options += f" --recipe {relative(args.recipe)}"
    if args.rows != ",".join(ROWS):
        options += f' --rows "{args.rows}"'
    return f"python scripts/ablate.py {options}" + (f" --section {args.section}" if args.section else "")


def relative(path: Path) -> str:
    """A path as a reader of docs/results.md would type it: from the repository root (../shared beside it)."""
    path = path.resolve()
    for base, shown in ((REPO, ""), (REPO.parent, "../")):
        if path.is_relative_to(base):
            return shown + str(path.relative_to(base))
    return str(path)


def render(results: list[dict], args, device_name: str, total: str) -> str:
    lines = [
        f"Measured {date.today()} on {device_name}, torch {torch.__version__}: {args.size} px, {args.epochs} epochs, "
        f"batch 64, seed 0, data {args.data.name} (all its images are the reference), {args.num_samples} samples "
        f"scored once, after the last epoch. Command: `{command_line(args)}`. {total}",
        "",
        "| row | FD (EfficientNet-Lite0) | KID | FD from the prior | precision | recall | density | coverage | "
        "recon MSE / image | copy ratio | wall time | samples |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    recipe = relative(args.recipe)
    legend = [f"- **{r['row']}**: " + (", ".join(f"`{k}: {v}`" for k, v in ROWS[r['row']].items()) or f"{recipe} as it is")
              + (f" (fitted after training on the {POST_HOC[r['row']]} row's checkpoint)" if r["row"] in POST_HOC else "")
              + (f" (a second stage on the {SECOND_STAGE[r['row']]} row's model; its wall time includes that row's)"
                 if r["row"] in SECOND_STAGE else "")
              for r in results]
    reference = next((r["best"]["value"] for r in results if r["row"] == "reference"), None)
    prefix = f"{args.section}-" if args.section else ""
    for result in results:
        metrics = result["best"]["metrics"]
        fd = result["best"]["value"]
        ratio = f" ({fd / reference:.2f}×)" if reference and result["row"] != "reference" else ""
        prior = metrics.get("fd_efficientnet_lite0_prior")
        shares = " | ".join(number(metrics.get(f"{name}_efficientnet_lite0"), ".2f") for name in ("precision", "recall", "density", "coverage"))
        lines.append(
            f"| {result['row']} | {fd:.1f}{ratio} | {metrics['kd_efficientnet_lite0']:.3f} | {number(prior, '.1f')} | {shares} | "
            f"{number(metrics.get('val_mse'), '.1f')} | {result['copy_ratio']:.2f} | {result['seconds'] / 60:.1f} min | "
            f"![{result['row']}](img/ablation/{prefix}{args.size}px-{result['slug']}.png) |"
        )
    twins = (" Fruit-360 films each apple turning, so a validation frame has a near-twin in the training set and real "
             "images score far below any sampler; a") if args.data.name == "apples" else " A"
    note = ("Precision and density say how many samples look like real images (fidelity), recall and coverage how much "
            f"of the real images the samples reach (diversity); k = 5 nearest neighbours on the same features as FD. "
            "Copy ratio: the median pixel distance from 2,000 samples to their nearest training image over the same "
            f"median for the validation images.{twins} row whose ratio fell toward 1 or below would be handing back "
            "training images (which a feature distance rewards). Wall time of a row fitted after training: its base "
            "row's training plus the fit and the scoring, what the row costs from scratch.")
    return "\n".join([*lines, "", note, "", f"What each row changes in {recipe}:", "", *legend])


def number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def record(table: str, results: list[dict], args) -> None:
    images = REPO / "docs" / "img" / "ablation"
    images.mkdir(parents=True, exist_ok=True)
    prefix = f"{args.section}-" if args.section else ""
    for result in results:
        shutil.copyfile(result["samples"], images / f"{prefix}{args.size}px-{result['slug']}.png")
    start, end = section_markers(f"ablation:{args.section}" if args.section else "ablation", args.size)
    heading = f"Ablation on {args.data.name}" if args.section else "Ablation"
    path = write_section(start, end, f"## {heading} at {args.size} px, {args.epochs} epochs\n\n{table}")
    print(f"wrote the table to {path} and the grids to {images}/")


def section_markers(tag: str, size: int) -> tuple[str, str]:
    """A table's markers in docs/results.md: 32 px keeps those it was first written between, another size has its own."""
    tag = tag if size == 32 else f"{tag}:{size}px"
    return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


def write_section(start: str, end: str, body: str) -> Path:
    """Put `body` between the markers `start` and `end` of docs/results.md (in place of what is there, or at its end)."""
    path = REPO / "docs" / "results.md"
    text = path.read_text()
    section = f"{start}\n{body}\n{end}"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return path


if __name__ == "__main__":
    main()
