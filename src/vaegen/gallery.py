"""What the gallery (`streamlit run ui.py`) shows, without Streamlit: the runs under a checkpoint
root and their metadata, sample grids, one labelled row per class, latent interpolations and
reconstructions of an uploaded image, each as a PIL image, plus the PNG bytes to download.

ui.py is a thin page of widgets over these functions, so everything here is unit-tested
without a browser. Models come from `vaegen.api.load` (safetensors and YAML: no code runs),
pictures from `vaegen.plots`, and uploads go through the same decoding as the training data.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from vaegen.api import load, read_model_folder
from vaegen.config import Config
from vaegen.data import decode_image
from vaegen.density import SAMPLER_FILE
from vaegen.errors import CheckpointError, DataError, VaegenError
from vaegen.plots import image_grid, labelled_rows, to_pil
from vaegen.samplers import per_class_samples, slerp
from vaegen.train import to_input

WEIGHTS = "model.safetensors"
ALL_CLASSES = "all classes"
# `vaegen train` writes best_models/<run>/ and `vaegen tune` best_models/<sweep>-best/; folders a few
# levels deeper (runs grouped by project) are found too, and the limit keeps a root pointed at a big
# tree cheap to scan.
MAX_DEPTH = 4
QUICKSTART = "bash scripts/quickstart.sh"


# ---------------------------------------------------------------------------------------
# Where the runs are


def checkpoint_root(argv: list[str], default: Path) -> Path:
    """`--best-dir DIR` from the arguments after `streamlit run ui.py --`, else $VAEGEN_BEST_DIR, else `default`."""
    # allow_abbrev=False: under a test runner argv is the runner's, and its options must not
    # be read as abbreviations of ours
    parser = argparse.ArgumentParser(prog="streamlit run ui.py --", add_help=False, allow_abbrev=False)
    parser.add_argument("--best-dir", type=Path)
    args, _ = parser.parse_known_args(argv)
    return args.best_dir or Path(os.environ.get("VAEGEN_BEST_DIR") or default)


@dataclass(frozen=True)
class Run:
    """One model folder under the root, with what its files say about it."""

    name: str  # the folder relative to the root, "/"-separated: what the page lists and ?run= names
    path: Path
    metadata: dict = field(default_factory=dict)  # model.safetensors metadata: classes, image size, epoch, score
    metrics: dict = field(default_factory=dict)  # metrics.json: criterion, value, every metric, FID protocol
    config: Config | None = None
    sweep: dict = field(default_factory=dict)  # sweep.json, beside a `vaegen tune` winner: sweep, trial, params
    error: str | None = None  # why the folder cannot be described (it is listed anyway, so it can be found)


def find_runs(root: Path) -> list[Run]:
    """Every folder under `root` holding model.safetensors, newest weights first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    # os.walk does not follow symbolic links, and open_run refuses any that lead out of the root
    for folder, subfolders, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".") and depth < MAX_DEPTH)
        if WEIGHTS in files:
            found.append(Path(folder))
    found.sort(key=lambda folder: (-(folder / WEIGHTS).stat().st_mtime_ns, str(folder)))
    return [read_run(root, folder.relative_to(root).as_posix()) for folder in found]


def open_run(root: Path, name: str) -> Path:
    """The folder of run `name`, refusing anything that is not a model folder inside `root`.

    Names come from the page's URL (`?run=`) as well as from the list, so `../../etc`, an
    absolute path or a symbolic link out of the root must not open anything.
    """
    root = Path(root).resolve()
    folder = (root / name).resolve()
    if not folder.is_relative_to(root):
        raise CheckpointError(
            f"{name!r} is outside the checkpoint root {root}; the gallery opens only model folders under it."
        )
    if not (folder / WEIGHTS).is_file():
        raise CheckpointError(
            f"there is no model named {name!r} under {root} (no {WEIGHTS} in it); pick one from the list."
        )
    return folder


def read_run(root: Path, name: str) -> Run:
    """Describe run `name` from its files without building the model; problems go to `Run.error`."""
    folder = open_run(root, name)
    try:
        _, config, metadata = read_model_folder(folder)
        metrics = _read_json_object(folder / "metrics.json", _metrics_problems)
        sweep = _read_json_object(folder / "sweep.json", _sweep_problems)
    except VaegenError as exc:
        return Run(name, folder, error=str(exc))
    return Run(name, folder, metadata, metrics, config, sweep)


def _read_json_object(path: Path, problems: Callable[[dict], list[str]]) -> dict:
    """metrics.json or sweep.json; both optional: the weights and the config are enough to use the model.
    `problems` lists fields the page reads whose types are not what vaegen writes: a hand-edited file
    must not break the page."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); it should be what vaegen wrote there.") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not the object vaegen writes there.")
    found = problems(value)
    if found:
        raise CheckpointError(f"{path} has {'; '.join(found)}; it should be what vaegen wrote there.")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics_problems(metrics: dict) -> list[str]:
    scores = metrics.get("metrics", {})
    if not isinstance(scores, dict):
        return [f"`metrics` as a JSON {type(scores).__name__}, not an object of numbers"]
    found = [f"`metrics.{key}` = {value!r}, not a number" for key, value in scores.items() if key.startswith(("fid_", "fd_")) and not _is_number(value)]
    if "criterion" in metrics and not _is_number(metrics.get("value")):
        found.append(f"`value` = {metrics.get('value')!r}, not a number")
    if "protocol" in metrics and not isinstance(metrics["protocol"], dict):
        found.append("`protocol` that is not an object")
    return found


def _sweep_problems(sweep: dict) -> list[str]:
    return [] if isinstance(sweep.get("params", {}), dict) else ["`params` that is not an object"]


def how_to_train(root: Path) -> str:
    """Markdown for an empty root: the README's quickstart command and where its model lands."""
    return (
        f"No trained models under `{root}` yet. Train one with the README's quickstart (about a minute on a CPU):\n\n"
        f"```bash\n{QUICKSTART}\n```\n\n"
        f"or `vaegen train --config configs/quickstart.yaml`. Its best checkpoint lands in `best_models/<run>/`; "
        f"reload this page. To browse another folder: `streamlit run ui.py -- --best-dir DIR`."
    )


# ---------------------------------------------------------------------------------------
# What the sidebar says about a run


def fid(run: Run) -> tuple[str, float] | None:
    """The run's Fréchet distance (name, value) at its best epoch, if it was measured."""
    scores = run.metrics.get("metrics", {})
    names = sorted(key for key in scores if key.startswith(("fid_", "fd_")))
    return (names[0], scores[names[0]]) if names else None


def protocol_text(protocol: dict) -> str:
    """How a Fréchet distance was measured, in one line: numbers are comparable only when this matches."""
    size = "×".join(str(side) for side in protocol.get("image_size", []))
    return (
        f"{protocol.get('backbone', '?')} features ({protocol.get('feature_dim', '?')}-d), "
        f"{protocol.get('num_generated', '?')} generated vs {protocol.get('num_real', '?')} real "
        f"{protocol.get('reference', '?')} images at {size}, {protocol.get('sampler', '?')} sampler, "
        f"T={protocol.get('temperature', '?')}"
    )


def describe(run: Run) -> dict[str, str]:
    """The run's metadata as label -> text, in the order the sidebar shows it."""
    if run.error is not None:
        return {"error": run.error}
    config, meta = run.config, run.metadata
    height, width = meta.get("image_size", config.data.image_size)
    classes = meta["classes"]
    rows = {
        "dataset": f"{Path(config.data.root).name} ({config.data.root})",
        "image size": f"{height}×{width}, {'RGB' if config.data.channels == 3 else 'grayscale'}",
        "classes": f"{len(classes)}: {', '.join(classes)}",
        "epoch": str(run.metrics.get("epoch", meta.get("epoch", "?"))),
    }
    if "criterion" in run.metrics:
        rows["selected on"] = f"{run.metrics['criterion']} = {run.metrics['value']:.4g}"
    score = fid(run)
    if score is None:
        rows["FID"] = "not measured (eval.backbone: none)"
    else:
        protocol = run.metrics.get("protocol")
        rows["FID"] = f"{score[0]} = {score[1]:.4g}" + (f" ({protocol_text(protocol)})" if protocol else "")
    # vaegen.load picks up a fitted latent mixture, and Generate then draws from it instead of the prior
    if (run.path / SAMPLER_FILE).is_file():
        rows["sampler"] = f"gmm fitted on the training codes ({config.sampler.components} components, {config.sampler.covariance} covariance)"
    else:
        rows["sampler"] = "prior N(0, I)"
    if run.sweep:
        params = ", ".join(f"{key} {value}" for key, value in run.sweep.get("params", {}).items())
        rows["sweep"] = f"best of {run.sweep.get('sweep', '?')}: trial {run.sweep.get('trial', '?')} ({params})"
    model, train, beta = config.model, config.train, config.beta
    rows["model"] = (
        f"{model.name}, latent {model.latent_dim}, widths {list(model.widths)}, conditional {model.conditional}"
    )
    rows["training"] = (
        f"{config.loss.recon} loss, β {beta.schedule} {beta.max:g}, {config.optim.name} lr {config.optim.lr:g}, "
        f"batch {train.batch_size}, {train.epochs} epochs, seed {train.seed}"
    )
    return rows


def summary(run: Run) -> str:
    """One line under the run's name in the list."""
    if run.error is not None:
        return "cannot be opened: " + run.error.split(";")[0]
    height, width = run.metadata.get("image_size", run.config.data.image_size)
    parts = [Path(run.config.data.root).name, f"{height}×{width}", f"{len(run.metadata['classes'])} classes"]
    parts.append(f"epoch {run.metrics.get('epoch', run.metadata.get('epoch', '?'))}")
    score = fid(run)
    if score is not None:
        parts.append(f"{score[0]} {score[1]:.4g}")
    if run.sweep:
        parts.append(f"best of sweep {run.sweep.get('sweep', '?')}")
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------
# Models and what they draw


def load_model(path: Path) -> torch.nn.Module:
    """The model in `path` on the CPU, in eval mode (the page caches it per path and file time)."""
    return load(path, "cpu")


def class_choices(model: torch.nn.Module) -> list[str]:
    """The class selector's options: every class by name, then all of them as labelled rows; none if unconditional."""
    return [*model.classes, ALL_CLASSES] if model.is_conditional else []


def row_labels(model: torch.nn.Module, choice: str | None) -> list[int | None]:
    """The class of each row a view draws: [None] unconditional, [k] for one class, every class for ALL_CLASSES."""
    if not model.is_conditional:
        return [None]
    if choice == ALL_CLASSES:
        return list(range(model.num_classes))
    return [model.class_indices(choice)]


def _page(model: torch.nn.Module, images: torch.Tensor, labels: list[int | None], per_row: int | None) -> Image.Image:
    """A grid with `per_row` images per row (None: square-ish); labelled with class names when it shows every class."""
    if len(labels) > 1:
        return labelled_rows(images, [model.classes[label] for label in labels])
    return to_pil(image_grid(images, nrow=per_row))


@torch.no_grad()
def sample_view(model: torch.nn.Module, count: int, seed: int, temperature: float, choice: str | None = None) -> Image.Image:
    """`count` samples (a row per class for ALL_CLASSES), from the checkpoint's latent mixture when it ships one,
    else from z ~ N(0, temperature² I); same seed, same picture."""
    labels = row_labels(model, choice)
    if len(labels) > 1:  # the same codes in every row, so the rows differ only by the class
        return _page(model, per_class_samples(model, count, seed, temperature), labels, count)
    images = model.sample(count, labels=labels[0], temperature=temperature, seed=seed)
    return _page(model, images, labels, per_row=None)


@torch.no_grad()
def interpolation_view(
    model: torch.nn.Module, steps: int, choice: str | None = None, seed: int = 0, images: torch.Tensor | None = None
) -> Image.Image:
    """Decoded steps along the path between two codes: two prior draws from `seed`, or the posterior
    means of `images` ([2, C, H, W], then shown at the ends of each row). One row per class for ALL_CLASSES."""
    device = next(model.parameters()).device
    labels = row_labels(model, choice)
    weights = torch.linspace(0, 1, steps, device=device)
    ends = None if images is not None else torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    rows = []
    for label in labels:
        if images is not None:  # a conditional encoder reads the class too, so each row encodes its own ends
            ends, _ = model.encode(images, label)
        path = model.decode(slerp(ends[0], ends[1], weights), label)
        rows.append(path if images is None else torch.cat([images[:1], path, images[1:]]))
    return _page(model, torch.cat(rows), labels, per_row=len(rows[0]))


def prepare_upload(data: bytes, model: torch.nn.Module) -> torch.Tensor:
    """An uploaded image file as the model's input [1, C, H, W] in [0, 1], converted and resized exactly
    like the training data (vaegen.data.decode_image with the model's data config)."""
    try:
        array = decode_image(io.BytesIO(data), model.config.data)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL's ways of saying "not an image I can read"
        raise DataError(f"the uploaded file is not an image that can be read ({exc}); upload a PNG, JPEG, WebP, BMP or TIFF file.") from exc
    return to_input(torch.tensor(array)[None], next(model.parameters()).device)  # a copy: PIL's array is read-only


@torch.no_grad()
def reconstruction_view(model: torch.nn.Module, image: torch.Tensor, choice: str | None = None) -> Image.Image:
    """`image` ([1, C, H, W]) beside its reconstruction (the decoded posterior mean); one pair per class for ALL_CLASSES."""
    labels = row_labels(model, choice)
    pairs = [torch.cat([image, model.reconstruct(image, label)]) for label in labels]
    return _page(model, torch.cat(pairs), labels, per_row=2)


# ---------------------------------------------------------------------------------------
# Showing and saving


def enlarge(image: Image.Image, max_width: int = 512) -> Image.Image:
    """A small grid scaled up for the screen by the largest whole factor that keeps it within `max_width`
    (nearest neighbour: sharp pixels, no invented detail). 16 or 32 px samples are unreadable at their size."""
    factor = max(1, max_width // image.width)
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
