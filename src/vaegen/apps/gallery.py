"""What the gallery (`streamlit run ui.py`) shows, without Streamlit, so it is unit-tested without a browser: the runs
under a checkpoint root and their metadata, each view (samples, interpolations, reconstructions) as a `Picture`
rendered at the screen's scale or at the model's resolution (the download), the latent diagnostics `vaegen test` draws,
and the compare view of several models."""

from __future__ import annotations

import argparse
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_origin

import torch
from PIL import Image

from vaegen.checkpoint import read_json_object
from vaegen.config import Config, DiagnosticsConfig
from vaegen.data.dataset import TEST_SETTINGS, decode_image, load_splits, to_input
from vaegen.errors import CheckpointError, DataError, VaegenError, pixel_size
from vaegen.evaluation.compare import CURVE_GROUPS, compare, curves_png, protocol_notes, samples_picture, table
from vaegen.evaluation.frechet import protocol_text
from vaegen.evaluation.latents import latent_pictures
from vaegen.models import family_of, reconstructs
from vaegen.pipeline import Pipeline, load, read_model_folder
from vaegen.plots import BLOCK_COLUMNS, image_grid, labelled_rows, scaled, to_pil
from vaegen.samplers.draw import per_class_samples, slerp
from vaegen.samplers.mixture import SAMPLER_FILE, latent_codes

WEIGHTS = "model.safetensors"
ALL_CLASSES = "all classes"
MAX_DEPTH = 4  # runs grouped a few folders deep are found; a root pointed at a big tree stays cheap to scan
QUICKSTART = "bash scripts/quickstart.sh"
MAX_SAMPLES = 256
MAX_SAMPLES_PER_CLASS = 64  # per class for all classes: 3 classes at 64 are already 192 tiles
# On screen a tile is enlarged by a whole factor to about SCREEN_TILE px (16 px samples are unreadable), within
# Streamlit's widest layout (wider pictures are resampled, blurred) and a pixel budget.
SCREEN_TILE = 96
SCREEN_MAX_WIDTH = 1460
SCREEN_MAX_PIXELS = 2048 * 2048


# Where the runs are
def checkpoint_root(argv: list[str], default: Path) -> Path:
    """`--best-dir DIR` from the arguments after `streamlit run ui.py --`, else $VAEGEN_BEST_DIR, else `default`."""
    # allow_abbrev=False: under a test runner argv is the runner's, and its options are not abbreviations of ours
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
    """Every folder under `root` holding model.safetensors, newest first, those that cannot be opened last."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder, subfolders, files in os.walk(root):  # does not follow links; open_run refuses those out of the root
        depth = len(Path(folder).relative_to(root).parts)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".") and depth < MAX_DEPTH)
        if WEIGHTS in files:
            found.append(Path(folder))
    found.sort(key=lambda folder: (-(folder / WEIGHTS).stat().st_mtime_ns, str(folder)))
    runs = [read_run(root, folder.relative_to(root).as_posix()) for folder in found]
    return sorted(runs, key=lambda run: run.error is not None)  # stable: each group stays newest first


def open_run(root: Path, name: str) -> Path:
    """The folder of run `name` (from the list or the URL's ?run=), refusing anything but a model folder in `root`."""
    root = Path(root).resolve()
    folder = (root / name).resolve()
    if not folder.is_relative_to(root):
        raise CheckpointError(f"{name!r} is outside the checkpoint root {root}; the gallery opens only model "
                              "folders under it.")
    if not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"there is no model named {name!r} under {root} (no {WEIGHTS} in it); "
                              "pick one from the list.")
    return folder


def read_run(root: Path, name: str) -> Run:
    """Describe run `name` from its files without building the model; problems go to `Run.error`."""
    folder = open_run(root, name)
    try:
        _, config, metadata = read_model_folder(folder)
        metrics, sweep = _read_json(folder / "metrics.json"), _read_json(folder / "sweep.json")
    except VaegenError as exc:
        return Run(name, folder, error=str(exc))
    return Run(name, folder, metadata, metrics, config, sweep)


def _read_json(path: Path) -> dict:
    """metrics.json or sweep.json ({} when absent: both are optional), refused where a field the page reads is not of
    the type vaegen writes, so a hand-edited file cannot break the page."""
    if not path.is_file():
        return {}
    value = read_json_object(path)
    scores, found = value.get("metrics", {}), []
    if not isinstance(scores, dict):
        scores, found = {}, [f"`metrics` as a JSON {type(scores).__name__}, not an object of numbers"]
    found += [f"`metrics.{key}` = {score!r}, not a number" for key, score in scores.items()
              if key.startswith(("fid_", "fd_")) and not _is_number(score)]
    if "criterion" in value and not _is_number(value.get("value")):
        found.append(f"`value` = {value.get('value')!r}, not a number")
    if "protocol" in value and not isinstance(value["protocol"], dict):
        found.append("`protocol` that is not an object")
    if not isinstance(value.get("params", {}), dict):
        found.append("`params` that is not an object")
    if found:
        raise CheckpointError(f"{path} holds {'; '.join(found)}; it should be what vaegen wrote there.")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def how_to_train(root: Path) -> str:
    """Markdown for a root without runs: whether it exists (a typo is not "no models yet"), and how to train one."""
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


# What the sidebar says about a run
def distance_label(name: str | None) -> str:
    """FID only for the standard Inception features (fid_*); other backbones' numbers are not FID values."""
    return "FID" if name is not None and name.startswith("fid_") else "Fréchet distance"


def fid(run: Run) -> tuple[str, float] | None:
    """The run's Fréchet distance (name, value) at its best epoch, if it was measured."""
    scores = run.metrics.get("metrics", {})
    names = sorted(key for key in scores if key.startswith(("fid_", "fd_")))
    return (names[0], scores[names[0]]) if names else None


def _size_and_epoch(run: Run) -> tuple[str, str]:
    height, width = run.metadata.get("image_size", run.config.data.image_size)
    return pixel_size(height, width), str(run.metrics.get("epoch", run.metadata.get("epoch", "?")))


def describe(run: Run) -> dict[str, str]:
    """The run's metadata as label -> text for the sidebar; {} for a run that cannot be opened (the page says why)."""
    if run.error is not None:
        return {}
    config, classes, (size, epoch) = run.config, run.metadata["classes"], _size_and_epoch(run)
    model, sampler = config.model, config.sampler
    names = ", ".join(classes)
    rows = {
        "dataset": f"{config.data.title} ({config.data.root})",
        "image size": f"{size} (width×height), {'RGB' if config.data.channels == 3 else 'grayscale'}",
        "classes": f"{len(classes)} in the training data ({names}); the model is unconditional"
        if model.conditional == "none" else f"{len(classes)}: {names}",
        "epoch": epoch,
    }
    if "criterion" in run.metrics:
        rows["selected on"] = f"{run.metrics['criterion']} = {run.metrics['value']:.4g}"
    score, protocol = fid(run), run.metrics.get("protocol")
    if score is None:
        rows[distance_label(None)] = "not measured (eval.backbone: none)"
    else:
        about = f" ({protocol_text(protocol)})" if protocol else ""
        rows[distance_label(score[0])] = f"{score[0]} = {score[1]:.4g}{about}"
    family = family_of(config.model).describe(config)
    mixture = f"gmm fitted on the training codes ({sampler.components} components, {sampler.covariance} covariance)"
    prior = family.pop("sampler", "prior N(0, I)")
    rows["sampler"] = mixture if (run.path / SAMPLER_FILE).is_file() else prior  # what Generate draws from
    if run.sweep:
        params = ", ".join(f"{key} {value}" for key, value in run.sweep.get("params", {}).items())
        rows["sweep"] = f"best of {run.sweep.get('sweep', '?')}: trial {run.sweep.get('trial', '?')} ({params})"
    rows.update(family)
    return rows


def summary(run: Run) -> str:
    """One line under the run's name in the list."""
    if run.error is not None:
        return "cannot be opened (select it to see why)"
    size, epoch = _size_and_epoch(run)
    classes = "unconditional" if run.config.model.conditional == "none" else f"{len(run.metadata['classes'])} classes"
    parts = [run.config.data.title, size, classes, f"epoch {epoch}"]
    score = fid(run)
    if score is not None:
        parts.append(f"{score[0]} {score[1]:.4g}")
    if run.sweep:
        parts.append(f"best of sweep {run.sweep.get('sweep', '?')}")
    return " · ".join(parts)


# Models and what they draw
def load_model(path: Path, sampling: dict | None = None) -> Pipeline:
    """The model in `path` on the CPU, in eval mode, sampling with the `sampling` keys changed (the page caches it per
    path, file time and settings); ConfigError for a setting the family refuses."""
    return load(path, "cpu", sampling=sampling or None)


@dataclass(frozen=True)
class SamplingControl:
    """A family's sampling key as the schema types it: its trained value, its choices (a Literal) or its bounds."""

    key: str
    value: object
    choices: tuple | None
    low: float | None
    high: float | None
    help: str


def sampling_controls(model: Pipeline) -> list[SamplingControl]:
    """The settings that change only how the model samples (its family's sampling_keys; none for most families), for
    the page's sampler controls."""
    fields = type(model.config.model).model_fields
    controls = []
    for key in family_of(model.config.model).adjustable(model.config):
        field_info = fields[key]
        choices = get_args(field_info.annotation) if get_origin(field_info.annotation) is Literal else None
        low = next((bound.ge for bound in field_info.metadata if hasattr(bound, "ge")), None)
        high = next((bound.le for bound in field_info.metadata if hasattr(bound, "le")), None)
        controls.append(SamplingControl(key, getattr(model.config.model, key), choices, low, high, field_info.description or ""))
    return controls


def class_choices(model: Pipeline) -> list[str]:
    """The class selector's options: every class, then all of them as labelled rows; none if unconditional."""
    return [*model.classes, ALL_CLASSES] if model.is_conditional else []


def row_labels(model: Pipeline, choice: str | None) -> list[int | None]:
    """The class of each block a view draws: [None] unconditional, [k] for one class, every class for ALL_CLASSES."""
    if not model.is_conditional:
        return [None]
    return list(range(model.num_classes)) if choice == ALL_CLASSES else [model.class_indices(choice)]


def max_samples(choice: str | None) -> int:
    """The most samples Generate draws: per class for ALL_CLASSES, else in all."""
    return MAX_SAMPLES_PER_CLASS if choice == ALL_CLASSES else MAX_SAMPLES


def draws_from(model: Pipeline) -> str:
    """Where generated codes come from, in the page's words."""
    return "the prior" if model.sampler is None else "the latent mixture"


def temperature_label(model: Pipeline) -> str:
    if model.sampler is not None:
        return "temperature (spread of the codes)"  # around each mixture component
    return f"temperature ({family_of(model.config.model).temperature_means})"


@dataclass(frozen=True, eq=False)
class Picture:
    """A view's `images` [N, C, H, W] in [0, 1] on the CPU, `columns` per row (None: square-ish), or one labelled
    block per name in `names`, each wrapping after `columns`."""

    images: torch.Tensor
    columns: int | None = None
    names: tuple[str, ...] | None = None

    def render(self, scale: int = 1) -> Image.Image:
        """Each pixel `scale`×`scale` (nearest neighbour: sharp pixels); class names drawn after scaling, sharp too."""
        if self.names is not None:
            return labelled_rows(self.images, list(self.names), self.columns, scale)
        return scaled(to_pil(image_grid(self.images, nrow=self.columns)), scale)

    def screen_scale(self) -> int:
        """The whole factor that shows a tile about SCREEN_TILE px tall, within the width and pixel limits."""
        width, height = self.render().size
        tile = math.ceil(SCREEN_TILE / self.images.shape[-2])
        return max(1, min(tile, SCREEN_MAX_WIDTH // width, math.isqrt(SCREEN_MAX_PIXELS // (width * height))))


def _picture(model: Pipeline, images: torch.Tensor, labels: list[int | None], columns: int | None) -> Picture:
    names = tuple(model.classes[label] for label in labels) if len(labels) > 1 else None
    return Picture(images.detach().cpu(), columns, names)


@torch.no_grad()
def sample_view(model: Pipeline, count: int, seed: int, temperature: float, choice: str | None = None) -> Picture:
    """`count` samples (per class for ALL_CLASSES) from the run's latent mixture if it has one, else from
    z ~ N(0, temperature² I); same seed, same picture."""
    labels = row_labels(model, choice)
    if not reconstructs(model):  # a family without a decoder draws with its own generate, told the class one-hot
        one_hot = torch.eye(model.num_classes)
        images = torch.cat([model.generate(count, torch.Generator().manual_seed(seed), temperature,
                                           None if label is None else one_hot[label]) for label in labels])
    elif len(labels) > 1:  # from the prior, the same codes in every block, so the blocks differ only by the class
        images = per_class_samples(model, count, seed, temperature, model.sampler)
    else:
        images = model.sample(count, labels=labels[0], temperature=temperature, seed=seed)
    return _picture(model, images, labels, BLOCK_COLUMNS if len(labels) > 1 else None)


@torch.no_grad()
def interpolation_view(
    model: Pipeline, steps: int, choice: str | None = None, seed: int = 0, temperature: float = 1.0,
    images: torch.Tensor | None = None,
) -> Picture:
    """Decoded steps along the slerp between two codes: two draws from `seed` (the run's sampler, else the prior, at
    `temperature`), or the posterior means of `images` ([2, C, H, W], shown at the row's ends). One row per class."""
    device = next(model.parameters()).device
    density = None if model.sampler is None else model.sampler.to(device)
    weights = torch.linspace(0, 1, steps, device=device)
    labels, rows = row_labels(model, choice), []
    for label in labels:
        if images is not None:  # a conditional encoder reads the class too, so each row encodes its own ends
            ends, _ = model.encode(images, label)
        else:  # the same generator state for every row: from the prior, every row joins the same two codes
            classes = None if label is None else torch.as_tensor(label)
            ends = latent_codes(2, model.latent_dim, torch.Generator().manual_seed(seed), classes, temperature, density)
            ends = ends.to(device)
        path = model.decode(slerp(ends[0], ends[1], weights), label)
        rows.append(path if images is None else torch.cat([images[:1], path, images[1:]]))
    return _picture(model, torch.cat(rows), labels, columns=len(rows[0]))


def prepare_upload(data: bytes, model: Pipeline) -> torch.Tensor:
    """An uploaded image file as the model's input [1, C, H, W] in [0, 1], decoded exactly like the training data."""
    try:
        array = decode_image(io.BytesIO(data), model.config.data)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL's "not an image I can read"
        reason = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc))  # PIL names the upload by its repr: noise
        raise DataError(f"the uploaded file is not an image that can be read ({reason}); upload a PNG, JPEG, WebP, "
                        "BMP or TIFF file.") from exc
    return to_input(torch.tensor(array)[None], next(model.parameters()).device)  # a copy: PIL's array is read-only


def upload_fit(data: bytes, model: Pipeline) -> str:
    """How prepare_upload fitted an image file to the model's size (its data.resize), in words."""
    height, width = model.config.data.image_size
    with Image.open(io.BytesIO(data)) as image:
        original_width, original_height = image.size
    if (original_width, original_height) == (width, height):
        return f"{pixel_size(height, width)}, as uploaded"
    how = "center-cropped and resized" if model.config.data.resize == "center_crop" else "stretched"
    if original_width * height == original_height * width:  # the same shape: cropping removes nothing
        how = "resized"
    return f"{how} from {pixel_size(original_height, original_width)} to {pixel_size(height, width)}"


@torch.no_grad()
def reconstruction_view(model: Pipeline, image: torch.Tensor, choice: str | None = None) -> Picture:
    """`image` ([1, C, H, W]) beside its reconstruction (the decoded posterior mean); a pair per class for all."""
    labels = row_labels(model, choice)
    pairs = [torch.cat([image, model.reconstruct(image, label)]) for label in labels]
    return _picture(model, torch.cat(pairs), labels, columns=2)


# The latent space
LATENT_CAPTIONS = {
    "kl_per_dim.png": "KL(q(z_d | x) ‖ N(0, 1)) of each latent dimension, mean over the images, sorted; the title counts "
                      "the active units",
    "code_variance_per_dim.png": "the variance of each dimension's code over the images, sorted (a deterministic code: "
                                 "no KL); the title counts the active units",
    "traversals.png": "the most used dimensions, one per row, moved from -3 to +3 standard deviations around the first "
                      "image's code, decoded",
    "latent_map.png": "the images' posterior means in two dimensions, coloured by class",
}


@torch.no_grad()
def latent_view(model: Pipeline, cfg: DiagnosticsConfig | None = None, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """What `vaegen test` draws of the latent space, as (file name, caption, PNG bytes), computed on the validation
    images of the data the model was trained on (its training images where it kept none aside). DataError when the
    data is not where its config says."""
    config = model.config
    splits = load_splits(config.data, config.train.seed, TEST_SETTINGS)
    split, data = ("validation", splits.val) if len(splits.val.images) else ("training", splits.train)
    stats, pictures = latent_pictures(model.model, data, cfg or DiagnosticsConfig(), seed, batch_size=64)
    where = f" ({len(data.images)} {split} images of {config.data.root}; {stats.active_units} of {stats.means.shape[1]} active)"
    return [(name, LATENT_CAPTIONS[name] + where, png_bytes(picture)) for name, picture in pictures.items()]


# Saving
def download_name(stem: str, view: str, choice: str | None = None, **settings: object) -> str:
    """A download's file name: the model, view, class and settings (apples-samples-Red-count16-seed0-T0.8.png)."""
    parts = [stem, view, *([choice] if choice else []),
             *(f"{key}{value:g}" if isinstance(value, float) else f"{key}{value}" for key, value in settings.items())]
    return re.sub(r"[^\w.-]+", "_", "-".join(parts)) + ".png"  # class names may hold spaces or slashes


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# Comparing models
@dataclass(frozen=True)
class CompareView:
    """What the compare view shows, all drawn by vaegen.evaluation.compare: the table (its header and a row of cells per
    model, as compare.md has it), the protocol notes, and the pictures as (caption, PNG bytes)."""

    header: list[str]
    rows: list[list[str]]
    notes: list[str]
    pictures: list[tuple[str, bytes]]


def compare_view(root: Path, names: list[str]) -> CompareView:
    """The models `names` under `root` (at least two) compared as `vaegen compare` compares them, with their runs'
    curves where their metrics.json names the run folder."""
    comparison = compare([open_run(root, name) for name in names])
    pictures = []
    for group, (title, _) in CURVE_GROUPS.items():
        png = curves_png(comparison, group)
        if png is not None:
            pictures.append((f"{title} against the epoch and the wall-clock time", png))
    samples = samples_picture(comparison)
    if samples is not None:
        pictures.append(("each model's best samples", png_bytes(samples)))
    return CompareView(*table(comparison), protocol_notes(comparison.entries), pictures)
