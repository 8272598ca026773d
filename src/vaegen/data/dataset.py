"""Image folders (or the other sources of vaegen.data.sources) decoded once into a uint8 tensor, cached, split, batched.

Each image is decoded and resized once into one [N, C, H, W] uint8 tensor, cached in a safetensors file keyed by the
file list (names, sizes, mtimes, ctimes) and the transform. Batch order follows from a seeded generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import socket
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from vaegen.checkpoint import atomic_write, file_in_the_way
from vaegen.config import DataConfig
from vaegen.data.sources import SourceImages, first_per_class, open_source
from vaegen.errors import DataError, pixel_size, plural

CACHE_FORMAT = 1  # bump when decoding or resizing changes, so old caches are not reused
# cache subfolders for what is computed from an entry; each file names its entry's fingerprint under FROM_ENTRY
FEATURES_FOLDER, CLASSIFIERS_FOLDER = "features", "classifiers"
DERIVED_FOLDERS = (FEATURES_FOLDER, CLASSIFIERS_FOLDER)
FROM_ENTRY = "data_fingerprint"
_ENTRY_NAME = re.compile(r"-(?P<size>\d+x\d+x\d+)-(?P<fingerprint>[0-9a-f]{20})\.safetensors$")
MAX_ENLARGEMENT = 4  # enlarged more than this many times along a side, an image is mostly interpolation blur
TOO_LARGE = ("Pillow refuses images over its limit as a guard against decompression bombs: shrink those (every image "
             "is resized anyway). ")


@dataclass(frozen=True)
class ImageIndex:
    root: Path
    files: list[Path]
    labels: list[int]
    classes: list[str]


@dataclass(frozen=True)
class DecodedImages:
    """All usable images of a folder (or another source): uint8 [N, C, H, W] plus int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    files: list[str]
    skipped: list[str]
    fingerprint: str  # identifies the files and the transform (the decode cache key)
    reasons: dict[str, str] = field(default_factory=dict)  # skipped file -> why it could not be read
    small: dict[str, list[int]] = field(default_factory=dict)  # file -> [width, height], if far under image_size


@dataclass(frozen=True)
class Splits:
    train: DecodedImages
    val: DecodedImages

    def select(self, name: str) -> DecodedImages:
        """"train", "val", or "all" (both, train first)."""
        if name != "all":
            return self.train if name == "train" else self.val
        train, val = self.train, self.val
        return dataclasses.replace(train, images=torch.cat([train.images, val.images]),
                                   labels=torch.cat([train.labels, val.labels]), files=train.files + val.files)


@dataclass(frozen=True)
class Settings:
    """How the user spells the data settings that error messages tell them to change."""

    root: str = "data.root"
    skip_bad: str = "data.skip_bad"
    too_small_for_val: str = "set data.val_fraction: 0 with a different output.select"
    image_size: str | None = "data.image_size"  # None: the size is fixed (a trained model's)


TRAIN_SETTINGS = Settings()
# `vaegen test` takes the data folder and skip_bad as its own keys, and cannot change the split's size
TEST_SETTINGS = Settings(root="data_root", skip_bad="skip_bad", image_size=None,
                         too_small_for_val="test on the data the model was trained on (leave data_root out)")
# `vaegen tune` sets the trials' data through the sweep file's overrides (--set overrides.data.root=...)
SWEEP_SETTINGS = Settings(
    root="overrides.data.root", skip_bad="overrides.data.skip_bad", image_size="overrides.data.image_size",
    too_small_for_val="set overrides.data.val_fraction: 0 with a different overrides.output.select",
)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def scan_folder(root: Path, names: Settings = TRAIN_SETTINGS) -> ImageIndex:
    """An ImageFolder (one subfolder per class) or a flat folder of images (one class); hidden files are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{names.root} {root} does not exist or is not a folder. Point {names.root} at a folder with "
                        f"one subfolder of images per class (or a flat folder of images), e.g. --set "
                        f"{names.root}=path/to/images.")
    links = _Links(trees=[Path(os.path.realpath(root))])
    candidates = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    class_dirs = [p for p in candidates if not p.is_symlink() or links.follow(p)]  # in order: the first link wins
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    per_class = [_images_under(class_dir, links) for class_dir in class_dirs]
    links.warn(root)
    if not class_dirs:
        if not loose:
            raise DataError(f"{names.root} {root} holds no images (looked for {', '.join(sorted(IMG_EXTENSIONS))}). "
                            f"Put images in it, or in one subfolder per class.")
        return ImageIndex(root, loose, [0] * len(loose), [root.name])
    empty = [class_dir.name for class_dir, found in zip(class_dirs, per_class) if not found]
    if empty:
        raise DataError(f"class folder(s) with no images in {root}: {', '.join(empty)}. Every subfolder of "
                        f"{names.root} is a class; add images to it or move it out of {names.root}.")
    if loose:
        warnings.warn(f"{len(loose)} image(s) directly in {root} are ignored because it has class subfolders "
                      f"(e.g. {loose[0].name}); move them into a class folder.", stacklevel=2)
    files = [path for found in per_class for path in found]
    labels = [label for label, found in enumerate(per_class) for _ in found]
    return ImageIndex(root, files, labels, [class_dir.name for class_dir in class_dirs])


@dataclass
class _Links:
    """The symlinked folders of one scan. A link is read only if its target overlaps no tree read so far, so a link
    to `.`, a parent, another class or a folder linked twice is skipped (it would read images twice, or loop)."""

    trees: list[Path]  # the real folders being read: the data folder, then each followed link's target
    skipped: list[str] = field(default_factory=list)

    def follow(self, link: Path) -> bool:
        """Whether to read a symlinked folder; if not, it is named in the warning."""
        target = Path(os.path.realpath(link))
        if any(target.is_relative_to(tree) or tree.is_relative_to(target) for tree in self.trees):
            self.skipped.append(f"{link} -> {target}")
            return False
        self.trees.append(target)
        return True

    def warn(self, root: Path) -> None:
        if self.skipped:
            them = "it" if len(self.skipped) == 1 else "them"
            shown = _listing([link.removeprefix(f"{root}{os.sep}") for link in self.skipped])
            warnings.warn(f"ignored {plural(len(self.skipped), 'symlinked folder')} under {root} that point back into "
                          f"it, above it or at a folder already read ({shown}): following {them} would read the same "
                          f"images twice, or loop. Remove {them} to silence this.", stacklevel=3)


def _images_under(folder: Path, links: _Links) -> list[Path]:
    """The images in a class folder and its subfolders, without hidden ones or the symlinked folders links skips."""
    found = []
    for here, subfolders, file_names in os.walk(folder, followlinks=True):
        here = Path(here)
        # sorted, so that of two links to one folder the same one is read every run; os.walk descends into what is kept
        visible = sorted(name for name in subfolders if not name.startswith("."))
        subfolders[:] = [name for name in visible if not (here / name).is_symlink() or links.follow(here / name)]
        found += [here / name for name in file_names if _is_image(here / name)]
    return sorted(found)


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode (CMYK, RGBA, palette, 16-bit, float) to RGB or L, 8 bits."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        # 16 bits; floats in [0, 1]; 32-bit "I" or "F" carry no range otherwise: 8 bits unless values exceed it
        sixteen = image.mode.startswith("I;16") or array.max() > 255
        top = 1.0 if image.mode == "F" and array.max() <= 1.0 else 65535.0 if sixteen else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels become white, the background of product photos like Fruit-360's
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB" if channels == 3 else "L")


def decode_image(path: Path | BinaryIO, cfg: DataConfig) -> np.ndarray:
    """One image file (a path or an open binary file) as a uint8 [C, H, W] array of the configured size/channels."""
    return decode_with_size(path, cfg)[0]


def decode_with_size(path: Path | BinaryIO, cfg: DataConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """decode_image's array, and the (width, height) of the image before it was resized."""
    with Image.open(path) as image:
        image.load()
        return fit_image(image, cfg)


def fit_image(image: Image.Image, cfg: DataConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """An image of any mode as a uint8 [C, H, W] array of the configured size/channels, and its (width, height)."""
    image = to_mode(image, cfg.channels)
    source_size = image.size
    size, bicubic = tuple(cfg.image_size[::-1]), Image.Resampling.BICUBIC  # PIL sizes are (width, height)
    image = ImageOps.fit(image, size, method=bicubic) if cfg.resize == "center_crop" else image.resize(size, bicubic)
    array = np.asarray(image, dtype=np.uint8)
    # contiguous [C, H, W], the layout a cached read gives: a transposed view would stack into a channels-last batch,
    # whose convolutions round differently, so a run's result would depend on whether its cache was warm
    return np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1)), source_size


def _why_unreadable(exc: Exception) -> str:
    """A few words on why a decoder gave up on a file, for the list of unreadable files."""
    if isinstance(exc, Image.DecompressionBombError):
        counts = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))  # Pillow gives pixels, not w×h
        limit = f": {int(counts[1]):,} pixels, over Pillow's limit of {int(counts[2]):,}" if counts else ""
        return f"too large{limit}"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can open"
    if "truncated" in str(exc).lower():
        return "truncated"
    if isinstance(exc, OSError) and exc.strerror:  # the file itself: permission denied, gone since the scan
        return exc.strerror.lower()
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= 80 else text[:79] + "…"


def _header(cfg: DataConfig, **identity) -> dict:
    """What a cache key covers besides the files: the transform, and data.limit only when set (so the keys of
    sources read whole stay what they were before data.limit)."""
    header = {"format": CACHE_FORMAT, "size": list(cfg.image_size), "channels": cfg.channels, "resize": cfg.resize,
              **identity}
    return header if cfg.limit is None else {**header, "limit": cfg.limit}


def cache_key(index: ImageIndex, cfg: DataConfig) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(_header(cfg, classes=index.classes), sort_keys=True).encode())
    for path, label in zip(index.files, index.labels):
        stat = path.stat()
        # mtime can be set back (os.utime, tar, rsync -t, cp -p), ctime cannot: a file rewritten in place with
        # its old size and mtime restored still gets a new ctime (on Windows st_ctime is the creation time)
        line = f"{path.relative_to(index.root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}\n"
        digest.update(line.encode())
    return digest.hexdigest()[:20]


def source_key(identity: dict, cfg: DataConfig) -> str:
    """The cache key of a torchvision or array source: what identifies it (vaegen.data.sources) and the transform."""
    return hashlib.sha256(json.dumps(_header(cfg, **identity), sort_keys=True).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAEGEN_CACHE", Path.home() / ".cache" / "vaegen"))


def limit_per_class(index: ImageIndex, limit: int | None) -> ImageIndex:
    """The first `limit` files of each class (all when None)."""
    kept = first_per_class(index.labels, limit)
    return dataclasses.replace(index, files=[index.files[i] for i in kept], labels=[index.labels[i] for i in kept])


def load_images(cfg: DataConfig, workers: int = 4, names: Settings = TRAIN_SETTINGS) -> DecodedImages:
    """Decode every image of cfg.root (as cfg.source reads it) once; later calls read the cached tensor."""
    if cfg.source == "folder":
        index = limit_per_class(scan_folder(cfg.root, names), cfg.limit)
        entry, fingerprint = index.root.name, cache_key(index, cfg)
        decode = functools.partial(_decode_all, index, cfg, workers, names, fingerprint)
    else:
        source = open_source(cfg, names.root)
        entry, fingerprint = source.name, source_key(source.identity, cfg)
        decode = functools.partial(_decode_source, source.read, cfg, workers, fingerprint)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    height, width = cfg.image_size
    cache_file = cache_dir / f"{entry}-{height}x{width}x{cfg.channels}-{fingerprint}.safetensors"
    result = _read_cache(cache_file, fingerprint) if cache_file.is_file() else None
    if result is None:
        result = decode()
        if _write_cache(cache_file, result, Path(cfg.root), cfg):
            with contextlib.suppress(OSError):  # the cache is optional, and so is keeping it small
                prune_cache(cache_dir, cache_file)
    _reported(result, cfg, names)
    return result


def _decode_all(index: ImageIndex, cfg: DataConfig, workers: int, names: Settings, fingerprint: str) -> DecodedImages:
    """Every image of the index decoded, or the error naming the unreadable ones (unless skip_bad)."""
    def decode_or_why(path: Path) -> tuple[np.ndarray, tuple[int, int]] | str:
        try:
            return decode_with_size(path, cfg)
        except Exception as exc:  # any decoder failure means "unreadable"; the list below says why
            return _why_unreadable(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(tqdm(pool.map(decode_or_why, index.files), total=len(index.files),
                            desc=f"decoding {index.root.name}", unit="img", disable=None))
    bad = {str(path): outcome for path, outcome in zip(index.files, decoded) if isinstance(outcome, str)}
    if bad and not cfg.skip_bad:
        raise _unreadable(bad, len(index.files), index.root, names)
    keep = [i for i, outcome in enumerate(decoded) if not isinstance(outcome, str)]
    listed = _listing_why(bad, index.root)
    if not keep:
        raise DataError(f"none of the {plural(len(index.files), 'image')} under {index.root} could be read ({listed}). "
                        f"Check that they are image files (JPEG, PNG, ...) that open in an image viewer, or point "
                        f"{names.root} at another folder.")
    # a class whose every image was skipped would be trained on (and asked to generate) with no examples
    emptied = [name for label, name in enumerate(index.classes) if not any(index.labels[i] == label for i in keep)]
    if emptied:
        raise DataError(f"class folder(s) {', '.join(emptied)} under {index.root} have no readable image once "
                        f"{names.skip_bad} drops the unreadable ones ({listed}). Add readable images to them, or move "
                        f"those folders out of {names.root}.")
    files = [str(index.files[i].relative_to(index.root)) for i in keep]
    kept = [decoded[i] for i in keep]
    images = torch.from_numpy(np.stack([array for array, _ in kept]))
    labels = torch.tensor([index.labels[i] for i in keep], dtype=torch.int64)
    return DecodedImages(images, labels, index.classes, files, list(bad), fingerprint, reasons=bad,
                         small=_far_too_small(files, [size for _, size in kept], cfg))


def _far_too_small(files: list[str], sizes: list[tuple[int, int]], cfg: DataConfig) -> dict[str, list[int]]:
    """file -> [width, height] of the images with a side under 1/MAX_ENLARGEMENT of image_size's: center_crop and
    stretch alike enlarge them more than that."""
    height, width = cfg.image_size
    return {file: [w, h] for file, (w, h) in zip(files, sizes) if w * MAX_ENLARGEMENT < width or h * MAX_ENLARGEMENT < height}


def _decode_source(read: Callable[[], SourceImages], cfg: DataConfig, workers: int, fingerprint: str) -> DecodedImages:
    """Every image a torchvision or array source keeps, fitted to the configured size and channels."""
    source = read()

    def fit(index: int) -> tuple[np.ndarray, tuple[int, int]]:
        try:
            return fit_image(source.image(index), cfg)
        except Exception as exc:  # a damaged file behind a dataset (CelebA's JPEGs); arrays were checked when read
            raise DataError(f"image {index} of {source.name} under {cfg.root} could not be read "
                            f"({_why_unreadable(exc)}); delete the dataset's files and download them again.") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(tqdm(pool.map(fit, source.indices), total=len(source.indices), desc=f"decoding {source.name}",
                            unit="img", disable=None))
    files = [f"{source.name}[{index}]" for index in source.indices]
    images = torch.from_numpy(np.stack([array for array, _ in decoded]))
    labels = torch.tensor(source.labels, dtype=torch.int64)
    return DecodedImages(images, labels, source.classes, files, [], fingerprint,
                         small=_far_too_small(files, [size for _, size in decoded], cfg))


def _listing(paths: list[str], limit: int = 10) -> str:
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _listing_why(bad: dict[str, str], root: Path | str) -> str:
    """Unreadable files by their path under root, each with its reason where known (an old cache has none)."""
    names = {path: path.removeprefix(f"{Path(root)}{os.sep}") for path in bad}
    return _listing([f"{names[path]} ({why})" if why else names[path] for path, why in bad.items()])


def _too_large_advice(bad: dict[str, str]) -> str:
    return TOO_LARGE if any(why.startswith("too large") for why in bad.values()) else ""


def _unreadable(bad: dict[str, str], total: int, root: Path, names: Settings) -> DataError:
    return DataError(f"{len(bad)} of {total} image(s) under {root} could not be read: {_listing_why(bad, root)}. "
                     f"{_too_large_advice(bad)}Delete or replace them, or set {names.skip_bad}: true "
                     f"(--set {names.skip_bad}=true) to go on without them.")


def _reported(images: DecodedImages, cfg: DataConfig, names: Settings) -> None:
    """Warn of skipped and far too small images, whether decoded now or read from the cache; a cache written with
    skip_bad: true still holds the bad list, so skip_bad: false fails the same way."""
    bad = {path: images.reasons.get(path, "") for path in images.skipped}
    if bad and not cfg.skip_bad:
        raise _unreadable(bad, len(images.files) + len(bad), cfg.root, names)
    if bad:
        warnings.warn(f"skipped {plural(len(bad), 'unreadable image')} ({names.skip_bad} is true): "
                      f"{_listing_why(bad, cfg.root)}. {_too_large_advice(bad)}".rstrip(), stacklevel=3)
    if not images.small:
        return
    height, width = cfg.image_size
    examples = _listing([f"{file} ({pixel_size(size[1], size[0])})" for file, size in images.small.items()], limit=3)
    smaller = f" or a smaller {names.image_size}" if names.image_size else ""
    one = len(images.small) == 1
    warnings.warn(f"{len(images.small)} of {plural(len(images.files), 'image')} under {cfg.root} "
                  f"{'is' if one else 'are'} far smaller than the {pixel_size(height, width)} "
                  f"{'it is' if one else 'they are'} resized to (a side under 1/{MAX_ENLARGEMENT} of it), so "
                  f"{'it trains' if one else 'they train'} as blur: {examples}. "
                  f"Use larger images{smaller}, or remove {'it' if one else 'these'}.", stacklevel=3)


def _write_cache(path: Path, images: DecodedImages, root: Path, cfg: DataConfig) -> bool:
    metadata = {key: json.dumps(getattr(images, key)) for key in ("classes", "files", "skipped", "reasons", "small")}
    # what prune_cache compares; the host too, as a cache folder shared over NFS holds other machines' folders
    metadata["source"] = json.dumps(_entry_source(root, cfg))
    tensors = {"images": images.images.contiguous(), "labels": images.labels}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return True
    except OSError as exc:  # a full or read-only disk included (checkpoint.StorageError): the cache is optional
        clash = file_in_the_way(path.parent)
        reason = f"{clash} is a file, not a folder" if clash else os.strerror(exc.errno) if exc.errno else exc
        warnings.warn(f"could not write the data cache {path} ({reason}); the next run decodes again. Set "
                      f"data.cache_dir (or $VAEGEN_CACHE) to a folder you can write to.", stacklevel=3)
        return False


def _entry_source(root: Path, cfg: DataConfig) -> dict:
    """What prune_cache compares; a folder read whole is recorded as before the other sources and data.limit."""
    source = {"root": str(Path(root).resolve()), "host": socket.gethostname(), "size": list(cfg.image_size),
              "channels": cfg.channels, "resize": cfg.resize}
    if cfg.source != "folder":
        source["kind"] = cfg.source
    if cfg.source == "torchvision":
        source |= {"dataset": cfg.dataset, "split": cfg.split or "train"}
    return source if cfg.limit is None else {**source, "limit": cfg.limit}


def prune_cache(cache_dir: Path, newest: Path) -> list[Path]:
    """Remove (and return) the entries `newest` replaces (same folder, transform and machine), those of this machine's
    gone folders, and what was computed from removed entries; entries with no source and unnamed files stay."""
    newest_source = _metadata(newest).get("source")
    removed, fingerprints = [], set()
    for entry in sorted(cache_dir.glob("*.safetensors")):
        match = _ENTRY_NAME.search(entry.name)
        if match is None:
            continue
        source = _metadata(entry).get("source")
        stale = entry != newest and source is not None and (source == newest_source or _folder_gone(source))
        if stale and _remove(entry):
            removed.append(entry)
        else:
            fingerprints.add(match["fingerprint"])
    for folder in DERIVED_FOLDERS:
        for derived in sorted((cache_dir / folder).glob("*.safetensors")):
            made_from = _metadata(derived).get(FROM_ENTRY)
            if made_from is not None and made_from not in fingerprints and _remove(derived):
                removed.append(derived)
    return removed


def _folder_gone(source: str) -> bool:
    """Whether an entry's folder (an array source's file) is known to be gone: on this machine, and missing (not merely
    unreadable)."""
    try:
        recorded = json.loads(source)
        is_kind = S_ISREG if recorded.get("kind") == "array" else S_ISDIR
        return recorded.get("host") == socket.gethostname() and not is_kind(os.stat(recorded["root"]).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError, KeyError, TypeError):  # unreadable, or a source this version did not write
        return False


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception:  # unreadable (being written, damaged): not ours to judge here
        return {}


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except OSError:  # another process removed it first, or the folder is read-only: it stays a cache entry
        return False


def _read_cache(path: Path, fingerprint: str) -> DecodedImages | None:
    try:
        metadata, tensors = _metadata(path), load_file(str(path))
        listed = {key: json.loads(metadata[key]) for key in ("classes", "files", "skipped")}
        extra = {key: json.loads(metadata.get(key, "{}")) for key in ("reasons", "small")}  # older entries lack them
        return DecodedImages(tensors["images"], tensors["labels"], fingerprint=fingerprint, **listed, **extra)
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        warnings.warn(f"ignoring unreadable data cache {path} ({exc}); decoding again.", stacklevel=3)
        return None


def split(images: DecodedImages, val_fraction: float, seed: int) -> Splits:
    """Deterministic train/val split, stratified by class: each class gives round(n * val_fraction)."""
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for label in range(len(images.classes)):
        members = torch.nonzero(images.labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) > 1:
            n_val = max(n_val, 1)
        n_val = min(n_val, len(members) - 1)  # every class keeps at least one training image
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return Splits(*(_subset(images, torch.cat(idx).sort().values) for idx in (train_idx, val_idx)))


def _subset(images: DecodedImages, idx: torch.Tensor) -> DecodedImages:
    files = [images.files[i] for i in idx.tolist()]
    return dataclasses.replace(images, images=images.images[idx], labels=images.labels[idx], files=files)


def to_device(splits: Splits, device: torch.device) -> Splits:
    """Both splits' uint8 images and labels on `device` (decoded once, copied once)."""
    return Splits(*(dataclasses.replace(part, images=part.images.to(device), labels=part.labels.to(device))
                    for part in (splits.train, splits.val)))


def load_splits(cfg: DataConfig, seed: int, names: Settings = TRAIN_SETTINGS) -> Splits:
    """The decoded images, split; `names` spells the settings the errors point at (training's, test's or a sweep's)."""
    splits = split(load_images(cfg, names=names), cfg.val_fraction, seed)
    if len(splits.train.images) == 0:
        raise DataError(f"{names.root} {cfg.root} leaves no training images after the validation split.")
    if cfg.val_fraction > 0 and len(splits.val.images) == 0:
        raise DataError(f"{names.root} {cfg.root} is too small for a validation split (need at least 2 images per "
                        f"class); add images or {names.too_small_for_val}.")
    return splits


def batches(
    images: DecodedImages, batch_size: int, generator: torch.Generator | None = None, hflip: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches of (images, labels). With a generator: shuffled, full batches only (a batch of one breaks
    BatchNorm; a split smaller than a batch is one batch), optional flips."""
    n = len(images.images)
    if generator is None:
        for start in range(0, n, batch_size):
            yield images.images[start : start + batch_size], images.labels[start : start + batch_size]
        return
    # drawn on the host from the seeded generator, so every placement of the data sees the same batches
    order = torch.randperm(n, generator=generator).to(images.images.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.images.device) if hflip else None
    size = min(batch_size, n)
    for start in range(0, n - size + 1, size):
        idx = order[start : start + size]
        batch = images.images[idx]
        if flips is not None:
            batch = torch.where(flips[idx, None, None, None], batch.flip(-1), batch)
        yield batch, images.labels[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def to_input(images_u8: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 images as the float [0, 1] batch a model takes, on `device`."""
    x = images_u8.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
