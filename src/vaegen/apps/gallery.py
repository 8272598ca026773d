"""What the gallery (`streamlit run ui.py`) shows, without Streamlit: the runs under a checkpoint
root and their metadata, sample grids, one labelled block per class, latent interpolations and
reconstructions of an uploaded image, each as a `Picture` that renders at the screen's scale or
at the model's resolution (the download), plus the PNG bytes.

ui.py is a thin page of widgets over these functions, so everything here is unit-tested
without a browser. Models come from `vaegen.pipeline.load` (safetensors and YAML: no code runs),
pictures from `vaegen.plots`, and uploads go through the same decoding as the training data.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from vaegen.config import Config
from vaegen.data.dataset import decode_image, to_input
from vaegen.errors import CheckpointError, DataError, VaegenError, pixel_size
from vaegen.evaluation.frechet import protocol_text
from vaegen.models import reconstructs
from vaegen.pipeline import Pipeline, load, read_model_folder
from vaegen.plots import BLOCK_COLUMNS, image_grid, labelled_rows, scaled, to_pil
from vaegen.samplers.draw import per_class_samples, slerp
from vaegen.samplers.mixture import SAMPLER_FILE, latent_codes

WEIGHTS = "model.safetensors"
ALL_CLASSES = "all classes"
# `vaegen train` writes best_models/<run>/ and `vaegen tune` best_models/<sweep>-best/; folders a few
# levels deeper (runs grouped by project) are found too, and the limit keeps a root pointed at a big
# tree cheap to scan.
MAX_DEPTH = 4
QUICKSTART = "bash scripts/quickstart.sh"
MAX_SAMPLES = 256
MAX_SAMPLES_PER_CLASS = 64  # all classes draw this many per class: 3 classes at 64 are already 192 tiles
# The screen scale: a whole factor that shows a tile about SCREEN_TILE px tall (16 or 32 px samples are
# unreadable at their size), unless the picture would outgrow SCREEN_MAX_WIDTH or SCREEN_MAX_PIXELS;
# the page column shrinks what is wider than it. Streamlit resamples (bilinear, blurred) any picture wider
# than its widest layout, 1460 px, so pixels stay sharp only up to that.
SCREEN_TILE = 96
SCREEN_MAX_WIDTH = 1460
SCREEN_MAX_PIXELS = 2048 * 2048


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
    """Every folder under `root` holding model.safetensors, newest weights first, those that cannot be
    opened after those that can (the page opens the first working one)."""
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
    runs = [read_run(root, folder.relative_to(root).as_posix()) for folder in found]
    return sorted(runs, key=lambda run: run.error is not None)  # stable: each group stays newest first


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
    """Markdown for a root without runs: whether it exists (a typo must not read as "no models yet"),
    then the README's quickstart command and where its model lands."""
    if Path(root).is_dir():
        found = f"No trained models under `{root}` yet."
    else:
        problem = "is not a folder" if Path(root).exists() else "does not exist"
        found = f"`{root}` {problem}; if you named it with --best-dir or $VAEGEN_BEST_DIR, check the path."
    return (
        f"{found} Train a model with the README's quickstart (about two minutes on a CPU, plus a one-time install):\n\n"
        f"```bash\n{QUICKSTART}\n```\n\n"
        f"or `vaegen train --config configs/quickstart.yaml`. Its best checkpoint lands in `best_models/<run>/`; "
        f"reload this page. To browse another folder: `streamlit run ui.py -- --best-dir DIR`."
    )


# ---------------------------------------------------------------------------------------
# What the sidebar says about a run


def distance_label(name: str | None) -> str:
    """FID only for the standard Inception features (fid_*); other backbones' numbers are not FID values."""
    return "FID" if name is not None and name.startswith("fid_") else "Fréchet distance"


def fid(run: Run) -> tuple[str, float] | None:
    """The run's Fréchet distance (name, value) at its best epoch, if it was measured."""
    scores = run.metrics.get("metrics", {})
    names = sorted(key for key in scores if key.startswith(("fid_", "fd_")))
    return (names[0], scores[names[0]]) if names else None


def describe(run: Run) -> dict[str, str]:
    """The run's metadata as label -> text, in the order the sidebar shows it; nothing for a run that
    cannot be opened (the page shows its error once, on the main page)."""
    if run.error is not None:
        return {}
    config, meta = run.config, run.metadata
    height, width = meta.get("image_size", config.data.image_size)
    classes = meta["classes"]
    if config.model.conditional == "none":
        classes_text = f"{len(classes)} in the training data ({', '.join(classes)}); the model is unconditional"
    else:
        classes_text = f"{len(classes)}: {', '.join(classes)}"
    rows = {
        "dataset": f"{Path(config.data.root).name} ({config.data.root})",
        "image size": f"{pixel_size(height, width)} (width×height), {'RGB' if config.data.channels == 3 else 'grayscale'}",
        "classes": classes_text,
        "epoch": str(run.metrics.get("epoch", meta.get("epoch", "?"))),
    }
    if "criterion" in run.metrics:
        rows["selected on"] = f"{run.metrics['criterion']} = {run.metrics['value']:.4g}"
    score = fid(run)
    if score is None:
        rows[distance_label(None)] = "not measured (eval.backbone: none)"
    else:
        protocol = run.metrics.get("protocol")
        text = f"{score[0]} = {score[1]:.4g}" + (f" ({protocol_text(protocol)})" if protocol else "")
        rows[distance_label(score[0])] = text
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
        return "cannot be opened (select it to see why)"
    height, width = run.metadata.get("image_size", run.config.data.image_size)
    classes = "unconditional" if run.config.model.conditional == "none" else f"{len(run.metadata['classes'])} classes"
    parts = [Path(run.config.data.root).name, pixel_size(height, width), classes]
    parts.append(f"epoch {run.metrics.get('epoch', run.metadata.get('epoch', '?'))}")
    score = fid(run)
    if score is not None:
        parts.append(f"{score[0]} {score[1]:.4g}")
    if run.sweep:
        parts.append(f"best of sweep {run.sweep.get('sweep', '?')}")
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------
# Models and what they draw


def load_model(path: Path) -> Pipeline:
    """The model in `path` on the CPU, in eval mode (the page caches it per path and file time)."""
    return load(path, "cpu")


def class_choices(model: Pipeline) -> list[str]:
    """The class selector's options: every class by name, then all of them as labelled rows; none if unconditional."""
    return [*model.classes, ALL_CLASSES] if model.is_conditional else []


def row_labels(model: Pipeline, choice: str | None) -> list[int | None]:
    """The class of each block a view draws: [None] unconditional, [k] for one class, every class for ALL_CLASSES."""
    if not model.is_conditional:
        return [None]
    if choice == ALL_CLASSES:
        return list(range(model.num_classes))
    return [model.class_indices(choice)]


def max_samples(choice: str | None) -> int:
    """The most samples Generate draws: per class for ALL_CLASSES, else in all."""
    return MAX_SAMPLES_PER_CLASS if choice == ALL_CLASSES else MAX_SAMPLES


def draws_from(model: Pipeline) -> str:
    """Where generated codes come from, in the page's words (vaegen.load attaches the run's fitted mixture, if any)."""
    return "the prior" if getattr(model, "latent_density", None) is None else "the latent mixture"


def temperature_label(model: Pipeline) -> str:
    if getattr(model, "latent_density", None) is None:
        return "temperature (standard deviation of z)"
    return "temperature (spread of the codes)"  # around each mixture component's mean


@dataclass(frozen=True, eq=False)
class Picture:
    """What a view drew, before it is laid out: `images` [N, C, H, W] in [0, 1] on the CPU, `columns` per
    row (None: square-ish), or in one block per name in `names` (one per class, labelled), each wrapping
    after `columns`. Rendered at the screen's scale for the page and at scale 1 for the download."""

    images: torch.Tensor
    columns: int | None = None
    names: tuple[str, ...] | None = None

    def render(self, scale: int = 1) -> Image.Image:
        """The picture with each pixel `scale`×`scale` (nearest neighbour: sharp pixels, no invented detail);
        class names are drawn after scaling, so they stay sharp."""
        if self.names is not None:
            return labelled_rows(self.images, list(self.names), self.columns, scale)
        return scaled(to_pil(image_grid(self.images, nrow=self.columns)), scale)

    def screen_scale(self) -> int:
        """The whole factor that shows a tile about SCREEN_TILE px tall, within the width and pixel limits."""
        width, height = self.render().size
        factor = min(
            math.ceil(SCREEN_TILE / self.images.shape[-2]),
            SCREEN_MAX_WIDTH // width,
            math.isqrt(SCREEN_MAX_PIXELS // (width * height)),
        )
        return max(1, factor)


def _picture(model: Pipeline, images: torch.Tensor, labels: list[int | None], columns: int | None) -> Picture:
    names = tuple(model.classes[label] for label in labels) if len(labels) > 1 else None
    return Picture(images.detach().cpu(), columns, names)


@torch.no_grad()
def sample_view(
    model: Pipeline, count: int, seed: int, temperature: float, choice: str | None = None
) -> Picture:
    """`count` samples (a block of `count` per class for ALL_CLASSES), from the checkpoint's latent mixture
    when it ships one, else from z ~ N(0, temperature² I); same seed, same picture."""
    labels = row_labels(model, choice)
    if not reconstructs(model):  # a family without a decoder draws with its own generate
        return _picture(model, _generated(model, count, seed, temperature, labels), labels, BLOCK_COLUMNS if len(labels) > 1 else None)
    if len(labels) > 1:  # from the prior, the same codes in every block, so the blocks differ only by the class
        return _picture(model, per_class_samples(model, count, seed, temperature, getattr(model, "latent_density", None)), labels, BLOCK_COLUMNS)
    images = model.sample(count, labels=labels[0], temperature=temperature, seed=seed)
    return _picture(model, images, labels, columns=None)


def _generated(model: Pipeline, count: int, seed: int, temperature: float, labels: list[int | None]) -> torch.Tensor:
    """`count` images per entry of `labels` from model.generate, each class told by its one-hot class weights."""
    one_hot = torch.eye(model.num_classes)
    return torch.cat([model.generate(count, torch.Generator().manual_seed(seed), temperature, None if label is None else one_hot[label])
                      for label in labels])


@torch.no_grad()
def interpolation_view(
    model: Pipeline, steps: int, choice: str | None = None, seed: int = 0, temperature: float = 1.0,
    images: torch.Tensor | None = None,
) -> Picture:
    """Decoded steps along the path between two codes: two draws from `seed` (from the latent mixture when the
    checkpoint ships one, else the prior, at `temperature`), or the posterior means of `images` ([2, C, H, W],
    then shown at the ends of each row). One row per class for ALL_CLASSES: a path reads left to right, unwrapped."""
    device = next(model.parameters()).device
    density = getattr(model, "latent_density", None)
    density = None if density is None else density.to(device)
    labels = row_labels(model, choice)
    weights = torch.linspace(0, 1, steps, device=device)
    rows = []
    for label in labels:
        if images is not None:  # a conditional encoder reads the class too, so each row encodes its own ends
            ends, _ = model.encode(images, label)
        else:  # the same generator state for every row: from the prior, every row joins the same two codes
            generator = torch.Generator().manual_seed(seed)
            classes = None if label is None else torch.tensor(label)
            ends = latent_codes(2, model.latent_dim, generator, classes, temperature, density).to(device)
        path = model.decode(slerp(ends[0], ends[1], weights), label)
        rows.append(path if images is None else torch.cat([images[:1], path, images[1:]]))
    return _picture(model, torch.cat(rows), labels, columns=len(rows[0]))


def prepare_upload(data: bytes, model: Pipeline) -> torch.Tensor:
    """An uploaded image file as the model's input [1, C, H, W] in [0, 1], converted and resized exactly
    like the training data (vaegen.data.dataset.decode_image with the model's data config)."""
    try:
        array = decode_image(io.BytesIO(data), model.config.data)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL's ways of saying "not an image I can read"
        # PIL names the in-memory file by its repr ("<_io.BytesIO object at 0x7f...>"): noise to the person uploading
        reason = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc))
        raise DataError(
            f"the uploaded file is not an image that can be read ({reason}); upload a PNG, JPEG, WebP, BMP or TIFF file."
        ) from exc
    return to_input(torch.tensor(array)[None], next(model.parameters()).device)  # a copy: PIL's array is read-only


def upload_fit(data: bytes, model: Pipeline) -> str:
    """How prepare_upload fitted an image file to the model's size, from its data.resize, in words."""
    height, width = model.config.data.image_size
    with Image.open(io.BytesIO(data)) as image:
        original_width, original_height = image.size
    if (original_width, original_height) == (width, height):
        return f"{pixel_size(height, width)}, as uploaded"
    if original_width * height == original_height * width:  # the same shape: cropping removes nothing
        how = "resized"
    else:
        how = "center-cropped and resized" if model.config.data.resize == "center_crop" else "stretched"
    return f"{how} from {pixel_size(original_height, original_width)} to {pixel_size(height, width)}"


@torch.no_grad()
def reconstruction_view(model: Pipeline, image: torch.Tensor, choice: str | None = None) -> Picture:
    """`image` ([1, C, H, W]) beside its reconstruction (the decoded posterior mean); one pair per class for ALL_CLASSES."""
    labels = row_labels(model, choice)
    pairs = [torch.cat([image, model.reconstruct(image, label)]) for label in labels]
    return _picture(model, torch.cat(pairs), labels, columns=2)


# ---------------------------------------------------------------------------------------
# Saving


def download_name(stem: str, view: str, choice: str | None = None, **settings: object) -> str:
    """The file name a downloaded picture gets: the model, the view, the class and the settings that drew it, so two
    downloads with other settings do not share a name (apples-samples-Red-count16-seed0-T0.8.png)."""
    parts = [stem, view, *([choice] if choice else []), *(f"{key}{value:g}" if isinstance(value, float) else f"{key}{value}"
                                                            for key, value in settings.items())]
    return re.sub(r"[^\w.-]+", "_", "-".join(parts)) + ".png"  # class names may hold spaces or slashes


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
