"""Images that are not files in a folder (data.source): a torchvision dataset, or a numpy array in a .npy/.npz file.

A source says what identifies it (the files it reads, for the decode cache's key) without reading its images;
`read()` then gives them as PIL images with labels and class names, which vaegen.data.dataset decodes and caches
as it does a folder's files.
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image

from vaegen.config import DataConfig
from vaegen.errors import DataError, plural

ARRAY_SHAPES = "N×H×W, N×H×W×C or N×C×H×W with C = 1 or 3"
ARRAY_VALUES = "uint8, or floats in [0, 1]"
IMAGE_KEYS, LABEL_KEYS, NAME_KEYS = ("images", "x"), ("labels", "y"), ("classes",)  # what an .npz's arrays are named


@dataclass(frozen=True)
class SourceImages:
    """The images a source keeps (data.limit applied), read one at a time."""

    name: str  # in the cache entry's file name and in DecodedImages.files (`name[index]`)
    indices: list[int]  # each kept image's index in the source
    labels: list[int]
    classes: list[str]
    image: Callable[[int], Image.Image]  # the source's image at an index, in any PIL mode


@dataclass(frozen=True)
class Source:
    """A source found on disk: what identifies it for the decode cache, and how to read its images."""

    name: str
    identity: dict[str, Any]  # goes into the cache key beside the transform
    read: Callable[[], SourceImages]


def first_per_class(labels: Sequence[int], limit: int | None) -> list[int]:
    """The positions of each class's first `limit` items, in order; all of them when limit is None."""
    if limit is None:
        return list(range(len(labels)))
    seen: Counter[int] = Counter()
    kept = []
    for position, label in enumerate(labels):
        seen[label] += 1
        if seen[label] <= limit:
            kept.append(position)
    return kept


def open_source(cfg: DataConfig, root_key: str = "data.root") -> Source:
    """data.root as cfg.source reads it; `root_key` is how the user spells data.root in the messages."""
    if cfg.source == "array":
        return _array_source(cfg, root_key)
    return _torchvision_source(cfg, root_key)


def _file_stamp(path: Path, name: str) -> str:
    # size, mtime and ctime, as a folder's files are keyed: a file rewritten in place gets a new ctime
    stat = path.stat()
    return f"{name}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"


# ---------------------------------------------------------------------------------------
# data.source: array


def _array_source(cfg: DataConfig, root_key: str) -> Source:
    path = Path(cfg.root)
    if not path.is_file():
        raise DataError(f"{root_key} {path} does not exist or is not a file. With data.source: array, point {root_key} "
                        f"at a .npy or .npz file of images ({ARRAY_SHAPES}; {ARRAY_VALUES}).")
    files = [path]
    if cfg.labels is not None:
        if not Path(cfg.labels).is_file():
            raise DataError(f"data.labels {cfg.labels} does not exist or is not a file; point it at a .npy of one "
                            f"whole-number label per image of {path}, or remove data.labels for one class.")
        files.append(Path(cfg.labels))
    identity = {"source": "array", "files": [_file_stamp(file, file.name) for file in files]}
    return Source(path.stem, identity, partial(_read_array, path, cfg))


def _read_array(path: Path, cfg: DataConfig) -> SourceImages:
    arrays = _arrays_in(path)
    images = _images_array(arrays, path)
    labels, classes = _labels_and_classes(arrays, cfg, path, len(images))
    kept = first_per_class(labels, cfg.limit)
    return SourceImages(path.stem, kept, [labels[i] for i in kept], classes, partial(_array_image, images))


def _load(path: Path) -> Any:
    """np.load without pickles (a pickle runs code); a file numpy cannot read is a DataError naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a {path.suffix} file numpy can read ({exc}); save it with numpy.save (.npy) or "
                        f"numpy.savez (.npz).") from None


def _arrays_in(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npy (named images) or an .npz."""
    loaded = _load(path)
    if isinstance(loaded, np.ndarray):
        return {"images": loaded}
    with loaded:
        try:
            return {name: loaded[name] for name in loaded.files}
        except ValueError as exc:  # an object array (Python strings, lists) is stored as a pickle
            raise DataError(f"{path} holds an array numpy stores as a pickle ({exc}), which vaegen does not load; "
                            f"save class names as a string array (numpy.array(names, dtype=str)).") from None


def _images_array(arrays: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """The images as an N×H×W×C array, checked: shape, type, range."""
    named = [key for key in IMAGE_KEYS if key in arrays]
    others = [key for key in arrays if key not in LABEL_KEYS + NAME_KEYS]
    if not named and len(others) != 1:
        raise DataError(f"{path} holds the arrays {', '.join(arrays) or 'none'}; vaegen reads the images from one "
                        f"named images (or x), the labels from labels (or y) and class names from classes. Save it "
                        f"with numpy.savez({path.name}, images=..., labels=...).")
    images = arrays[named[0] if named else others[0]]
    shape = "×".join(map(str, images.shape))
    if images.ndim == 3 and images.shape[-1] in (1, 3):  # H×W×C: images 1 or 3 pixels wide are one image
        raise DataError(f"{path} holds an array of shape {shape}, which reads as {images.shape[0]} images "
                        f"{images.shape[-1]} pixels wide; vaegen reads {ARRAY_SHAPES}. For one image, add the N axis "
                        f"(array[None]) and save it again.")
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4 and images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # N×C×H×W; an axis of 1 or 3 last is read as the channels
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{path} holds an array of shape {shape}; vaegen reads {ARRAY_SHAPES}. Reshape it to one "
                        f"of those and save it again.")
    if images.size == 0:
        raise DataError(f"{path} holds no images (shape {shape}); save at least one image per class.")
    _check_values(images, path)
    return images


def _check_values(images: np.ndarray, path: Path) -> None:
    """uint8, or finite floats in [0, 1]."""
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{path} holds {images.dtype} values; images are {ARRAY_VALUES}. Convert it "
                        f"(array.astype(numpy.uint8) for whole numbers from 0 to 255, array / 255.0 for floats).")
    bad = int(np.count_nonzero(~np.isfinite(images)))
    if bad:
        raise DataError(f"{path} holds {bad:,} NaN or infinite values (of {images.size:,}); images are "
                        f"{ARRAY_VALUES}. Replace them (numpy.nan_to_num) or leave those images out.")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{path} holds floats from {low:g} to {high:g}; float images lie in [0, 1]. Rescale it "
                        f"(e.g. array / 255.0 for 0 to 255) or save it as uint8.")


def _array_image(images: np.ndarray, index: int) -> Image.Image:
    pixels = images[index]
    if pixels.dtype != np.uint8:  # rounded as a float image file is (vaegen.data.dataset.to_mode)
        pixels = np.clip(pixels.astype(np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)  # mode L or RGB


def _labels_and_classes(arrays: dict[str, np.ndarray], cfg: DataConfig, path: Path, n: int) -> tuple[list[int], list[str]]:
    """Labels numbered from 0 in the order of their values, and a name for each: no labels is one class (the file's)."""
    key = next((key for key in LABEL_KEYS if key in arrays), None)
    if cfg.labels is not None:
        raw, where = _load(Path(cfg.labels)), f"data.labels {cfg.labels} (for {path})"
    elif key is not None:
        raw, where = arrays[key], f"the {key} array of {path}"
    else:
        return [0] * n, [path.stem]
    if not isinstance(raw, np.ndarray) or raw.shape != (n,) or not np.issubdtype(raw.dtype, np.integer):
        found = f"shape {raw.shape}, {raw.dtype}" if isinstance(raw, np.ndarray) else "an .npz"
        raise DataError(f"{where} is no list of labels for its {plural(n, 'image')} ({found}); give one whole number "
                        f"per image, a 1-D integer array of length {n} (labels.astype(int)).")
    if raw.min() < 0:
        raise DataError(f"{where} holds the negative label {int(raw.min())}; labels are whole numbers from 0.")
    names = arrays.get("classes")
    if names is None:
        return present_classes(raw, {int(value): f"class_{value}" for value in np.unique(raw)})
    if names.ndim != 1 or len(names) <= raw.max():
        raise DataError(f"the classes array of {path} names {len(names.ravel())} class(es) but its labels go up to "
                        f"{int(raw.max())}; give one name per label value (classes[label] names that class).")
    return present_classes(raw, [name.decode() if isinstance(name, bytes) else str(name) for name in names])


def present_classes(labels: Sequence[int], names: Sequence[str] | Mapping[int, str]) -> tuple[list[int], list[str]]:
    """Labels renumbered over the classes some item has, and those classes' names: a class with no images would be
    trained on, and asked to generate, with no examples."""
    values = np.unique(np.asarray(labels, dtype=np.int64))
    return np.searchsorted(values, labels).tolist(), [names[int(value)] for value in values]


# ---------------------------------------------------------------------------------------
# data.source: torchvision


def _split(cfg: DataConfig) -> str:
    return cfg.split or "train"


def _datasets():
    # imported on use: torchvision costs about 1.4 s, and only this source needs it (not `import vaegen`)
    import torchvision.datasets

    return torchvision.datasets


def needed_files(dataset: str, split: str) -> list[str]:
    """The files (and CelebA's image folder) torchvision reads for a dataset's split, relative to its root."""
    torchvision_datasets = _datasets()
    kind = getattr(torchvision_datasets, dataset)
    if issubclass(kind, torchvision_datasets.MNIST):  # FashionMNIST, KMNIST: the same raw files in their own folder
        return [f"{dataset}/raw/{Path(file).stem}" for file, _ in kind.resources]
    if issubclass(kind, torchvision_datasets.CIFAR10):  # CIFAR100 too; torchvision checks every batch either way
        files = [name for name, _ in kind.train_list + kind.test_list] + [kind.meta["filename"]]
        return [f"{kind.base_folder}/{name}" for name in files]
    if kind is torchvision_datasets.SVHN:
        return [kind.split_list[split][1]]
    # CelebA: the annotation lists and the folder its image archive unpacks to (the archive may be deleted)
    return [f"{kind.base_folder}/{name}" for _, _, name in kind.file_list if not name.endswith(".zip")] + [
        f"{kind.base_folder}/img_align_celeba"]


def _torchvision_source(cfg: DataConfig, root_key: str) -> Source:
    root, split = Path(cfg.root), _split(cfg)
    needed = needed_files(cfg.dataset, split)
    opened = None
    if any(not (root / name).exists() for name in needed):
        if not cfg.download:
            raise _not_there(cfg, root_key, None)
        opened = _download(cfg, root_key)
    identity = {"source": "torchvision", "dataset": cfg.dataset, "split": split,
                "files": [_file_stamp(root / name, name) for name in needed if (root / name).exists()]}
    return Source(f"{cfg.dataset}-{split}", identity, partial(_read_dataset, cfg, root_key, opened))


def _download(cfg: DataConfig, root_key: str) -> Any:
    """The dataset, downloaded into data.root: torchrun's processes (or runs side by side) take turns, so the first
    downloads and the others find the files."""
    root = Path(cfg.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / ".vaegen-download.lock"))
        with lock:
            return _open_dataset(cfg, root_key, download=True)
    except OSError as exc:  # the folder or its lock cannot be made: read-only, a file in the way
        raise DataError(f"{root_key} {root} cannot hold a download ({exc}); point {root_key} at a folder you can "
                        f"write to, or put torchvision's files there yourself.") from None


def _open_dataset(cfg: DataConfig, root_key: str, download: bool) -> Any:
    torchvision_datasets = _datasets()
    kind, split = getattr(torchvision_datasets, cfg.dataset), _split(cfg)
    takes_train = issubclass(kind, (torchvision_datasets.MNIST, torchvision_datasets.CIFAR10))
    part = {"train": split == "train"} if takes_train else {"split": split}  # the others take a split's name
    try:
        return kind(str(cfg.root), download=download, **part)
    except Exception as exc:  # torchvision's "not found or corrupted", a failed download, a missing gdown: all say why
        raise _not_there(cfg, root_key, exc) from None


def _not_there(cfg: DataConfig, root_key: str, exc: Exception | None) -> DataError:
    """The files missing under data.root, or why torchvision could not use those that are there."""
    root, split = Path(cfg.root), _split(cfg)
    needed = needed_files(cfg.dataset, split)
    missing = [name for name in needed if not (root / name).exists()]
    why = re.sub(r"\s+", " ", str(exc) or type(exc).__name__).strip() if exc is not None else ""
    why = why if len(why) <= 160 else why[:159] + "…"
    if not missing:
        top = root / Path(needed[0]).parts[0]
        return DataError(f"torchvision could not read {cfg.dataset} ({split}) from {top} ({why}): a file there is "
                         f"damaged or partly downloaded. Delete it and let vaegen download it again "
                         f"(data.download: true).")
    tried = f"Downloading them failed ({why}). " if cfg.download else ""
    fetch = "run again once online" if cfg.download else "set data.download: true on a machine that is online"
    listed = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    return DataError(f"{root_key} {root} does not hold {cfg.dataset} ({split}): missing {listed}. {tried}Put "
                     f"torchvision's files in {root / Path(missing[0]).parent} (e.g. copied from a machine where "
                     f"torchvision.datasets.{cfg.dataset}(root, download=True) ran), {fetch}, or point {root_key} at "
                     f"a folder that holds them.")


def _read_dataset(cfg: DataConfig, root_key: str, opened: Any) -> SourceImages:
    dataset = opened if opened is not None else _open_dataset(cfg, root_key, download=False)
    targets = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if targets is None:  # CelebA has no classes: one, named after the dataset
        targets, names = np.zeros(len(dataset), dtype=np.int64), [cfg.dataset]
    else:  # SVHN names no classes: its labels are the digits
        targets = np.asarray(targets, dtype=np.int64)
        names = getattr(dataset, "classes", None) or [str(label) for label in range(int(targets.max()) + 1)]
    labels, classes = present_classes(targets, names)
    kept = first_per_class(labels, cfg.limit)
    return SourceImages(f"{cfg.dataset}-{_split(cfg)}", kept, [labels[i] for i in kept], classes,
                        lambda index: dataset[index][0])
