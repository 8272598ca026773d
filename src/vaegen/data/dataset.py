"""Image folders decoded once into a uint8 tensor, cached on disk, split and batched.

Decoding JPEGs is the slow part of image data and it gives the same answer every epoch,
so every image is decoded, converted and resized exactly once, stored as one
[N, C, H, W] uint8 tensor in a safetensors file keyed by the file list (names, sizes,
modification and change times) and the transform. A second run with the same data decodes
nothing. Batches are drawn by shuffling indices into that tensor with a seeded generator, so
the batch order is a function of the seed and the generator state, which the training
checkpoint stores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import socket
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from vaegen.checkpoint import atomic_write, file_in_the_way
from vaegen.config import DataConfig
from vaegen.errors import DataError, pixel_size, plural

# Bump when decoding or resizing changes, so old caches are not reused.
CACHE_FORMAT = 1
# What is computed from a decoded entry (real features, the fidelity classifier) lives in these subfolders of the
# cache folder and names its entry's fingerprint in its metadata, so that it goes when its entry goes.
FEATURES_FOLDER, CLASSIFIERS_FOLDER = "features", "classifiers"
DERIVED_FOLDERS = (FEATURES_FOLDER, CLASSIFIERS_FOLDER)
FROM_ENTRY = "data_fingerprint"
_ENTRY_NAME = re.compile(r"-(?P<size>\d+x\d+x\d+)-(?P<fingerprint>[0-9a-f]{20})\.safetensors$")
# enlarged more than this many times along a side, an image is mostly interpolation blur: rarely meant as data
MAX_ENLARGEMENT = 4


@dataclass(frozen=True)
class ImageIndex:
    root: Path
    files: list[Path]
    labels: list[int]
    classes: list[str]


@dataclass(frozen=True)
class DecodedImages:
    """All usable images of a folder: uint8 [N, C, H, W] plus int64 labels."""

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
        return dataclasses.replace(
            self.train,
            images=torch.cat([self.train.images, self.val.images]),
            labels=torch.cat([self.train.labels, self.val.labels]),
            files=self.train.files + self.val.files,
        )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


@dataclass(frozen=True)
class Settings:
    """How the user spells the data settings that error messages tell them to change."""

    root: str = "data.root"
    skip_bad: str = "data.skip_bad"
    too_small_for_val: str = "set data.val_fraction: 0 with a different output.select"
    image_size: str | None = "data.image_size"  # None: the size is fixed (a trained model's)


TRAIN_SETTINGS = Settings()
# `vaegen test` takes the data folder and skip_bad as its own keys, and cannot change the split's size
TEST_SETTINGS = Settings(
    root="data_root",
    skip_bad="skip_bad",
    too_small_for_val="test on the data the model was trained on (leave data_root out)",
    image_size=None,
)
# `vaegen tune` sets the trials' data through the sweep file's overrides (--set overrides.data.root=...)
SWEEP_SETTINGS = Settings(
    root="overrides.data.root",
    skip_bad="overrides.data.skip_bad",
    too_small_for_val="set overrides.data.val_fraction: 0 with a different overrides.output.select",
    image_size="overrides.data.image_size",
)


def scan_folder(root: Path, names: Settings = TRAIN_SETTINGS) -> ImageIndex:
    """An ImageFolder (one subfolder per class) or a flat folder of images (one class). Hidden files and folders
    (.ipynb_checkpoints, .thumbs) are skipped at any depth, and symlinked folders are followed as _Links says."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{names.root} {root} does not exist or is not a folder. Point {names.root} at a folder with one "
            f"subfolder of images per class (or a flat folder of images), e.g. --set {names.root}=path/to/images."
        )
    links = _Links(trees=[Path(os.path.realpath(root))])
    candidates = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    class_dirs = [p for p in candidates if not p.is_symlink() or links.follow(p)]  # in order: the first link wins
    if not class_dirs:
        files = sorted(p for p in root.iterdir() if _is_image(p))
        links.warn(root)
        if not files:
            raise DataError(
                f"{names.root} {root} holds no images (looked for {', '.join(sorted(IMG_EXTENSIONS))}). "
                f"Put images in it, or in one subfolder per class."
            )
        return ImageIndex(root, files, [0] * len(files), [root.name])

    files, labels, empty = [], [], []
    for label, class_dir in enumerate(class_dirs):
        class_files = _images_under(class_dir, links)
        if not class_files:
            empty.append(class_dir.name)
        files += class_files
        labels += [label] * len(class_files)
    links.warn(root)
    if empty:
        raise DataError(
            f"class folder(s) with no images in {root}: {', '.join(empty)}. Every subfolder of {names.root} "
            f"is a class; add images to it or move it out of {names.root}."
        )
    loose = [p.name for p in root.iterdir() if _is_image(p)]
    if loose:
        warnings.warn(
            f"{len(loose)} image(s) directly in {root} are ignored because it has class subfolders "
            f"(e.g. {loose[0]}); move them into a class folder.",
            stacklevel=2,
        )
    return ImageIndex(root, files, labels, [d.name for d in class_dirs])


@dataclass
class _Links:
    """The symlinked folders of one scan. A link is followed only into a folder tree that nothing read so far
    overlaps (the data folder's own tree, or an earlier link's), so a link to `.`, to a parent, to another class or
    to a folder linked twice is skipped: it would read images twice, or loop. A class kept on another disk and
    linked in is read, with its subfolders."""

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
            warnings.warn(
                f"ignored {plural(len(self.skipped), 'symlinked folder')} under {root} that point back into it, above "
                f"it or at a folder already read ({shown}): following {them} would read the same images twice, or "
                f"loop. Remove {them} to silence this.",
                stacklevel=3,
            )


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
        if image.mode.startswith("I;16"):
            top = 65535.0
        elif image.mode == "F" and array.max() <= 1.0:
            top = 1.0
        else:  # 32-bit "I" or "F" carry no range: take 8 bits unless values exceed it
            top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels become white, the background of product photos like Fruit-360's
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB" if channels == 3 else "L")


def decode_image(path: Path | BinaryIO, cfg: DataConfig) -> np.ndarray:
    """One image file (a path, or an open binary file such as an upload) to a uint8 [C, H, W] array
    of the configured size and channels."""
    return decode_with_size(path, cfg)[0]


def decode_with_size(path: Path | BinaryIO, cfg: DataConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """decode_image's array, and the (width, height) of the image before it was resized."""
    height, width = cfg.image_size
    with Image.open(path) as image:
        image.load()
        image = to_mode(image, cfg.channels)
    source_size = image.size
    if cfg.resize == "center_crop":
        image = ImageOps.fit(image, (width, height), method=Image.Resampling.BICUBIC)
    else:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)), source_size


def _why_unreadable(exc: Exception) -> str:
    """A few words on why a decoder gave up on a file, for the list of unreadable files."""
    if isinstance(exc, Image.DecompressionBombError):
        # Pillow says how many pixels, not width×height
        counts = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
        if counts is None:
            return "too large"
        return f"too large: {int(counts[1]):,} pixels, over Pillow's limit of {int(counts[2]):,}"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can open"
    if "truncated" in str(exc).lower():
        return "truncated"
    if isinstance(exc, OSError) and exc.strerror:  # the file itself: permission denied, gone since the scan
        return exc.strerror.lower()
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= 80 else text[:79] + "…"


def cache_key(index: ImageIndex, cfg: DataConfig) -> str:
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "size": list(cfg.image_size),
        "channels": cfg.channels,
        "resize": cfg.resize,
        "classes": index.classes,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path, label in zip(index.files, index.labels):
        stat = path.stat()
        # mtime can be set back (os.utime, tar, rsync -t, cp -p), ctime cannot: a file rewritten in place with
        # its old size and mtime restored still gets a new ctime (on Windows st_ctime is the creation time)
        digest.update(
            f"{path.relative_to(index.root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}\n".encode()
        )
    return digest.hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAEGEN_CACHE", Path.home() / ".cache" / "vaegen"))


def load_images(cfg: DataConfig, workers: int = 4, names: Settings = TRAIN_SETTINGS) -> DecodedImages:
    """Decode every image under cfg.root once; later calls read the cached tensor."""
    index = scan_folder(cfg.root, names)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    height, width = cfg.image_size
    fingerprint = cache_key(index, cfg)
    cache_file = cache_dir / f"{index.root.name}-{height}x{width}x{cfg.channels}-{fingerprint}.safetensors"
    if cache_file.is_file():
        cached = _read_cache(cache_file, fingerprint)
        if cached is not None:
            return _reported(cached, cfg, names)

    def decode_or_why(path: Path) -> tuple[np.ndarray, tuple[int, int]] | str:
        try:
            return decode_with_size(path, cfg)
        except Exception as exc:  # any decoder failure means "unreadable"; the list below says why
            return _why_unreadable(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(
            tqdm(pool.map(decode_or_why, index.files), total=len(index.files), desc=f"decoding {index.root.name}", unit="img", disable=None)
        )
    bad = {str(path): outcome for path, outcome in zip(index.files, decoded) if isinstance(outcome, str)}
    if bad and not cfg.skip_bad:
        raise _unreadable(bad, len(index.files), index.root, names)
    keep = [i for i, outcome in enumerate(decoded) if not isinstance(outcome, str)]
    listed = _listing_why(bad, index.root)
    if not keep:
        raise DataError(
            f"none of the {plural(len(index.files), 'image')} under {index.root} could be read ({listed}). "
            f"Check that they are image files (JPEG, PNG, ...) that open in an image viewer, or point {names.root} at another folder."
        )
    # a class whose every image was skipped would be trained on (and asked to generate) with no examples
    emptied = [name for label, name in enumerate(index.classes) if not any(index.labels[i] == label for i in keep)]
    if emptied:
        raise DataError(
            f"class folder(s) {', '.join(emptied)} under {index.root} have no readable image once {names.skip_bad} drops the "
            f"unreadable ones ({listed}). Add readable images to them, or move those folders out of {names.root}."
        )
    files = [str(index.files[i].relative_to(index.root)) for i in keep]
    result = DecodedImages(
        images=torch.from_numpy(np.stack([decoded[i][0] for i in keep])),
        labels=torch.tensor([index.labels[i] for i in keep], dtype=torch.int64),
        classes=index.classes,
        files=files,
        skipped=list(bad),
        fingerprint=fingerprint,
        reasons=bad,
        small={file: list(decoded[i][1]) for file, i in zip(files, keep) if _far_smaller(decoded[i][1], cfg)},
    )
    if _write_cache(cache_file, result, index.root, cfg):
        with contextlib.suppress(OSError):  # the cache is optional, and so is keeping it small
            prune_cache(cache_dir, cache_file)
    return _reported(result, cfg, names)


def _far_smaller(source_size: tuple[int, int], cfg: DataConfig) -> bool:
    """Whether a side of a (width, height) image is under 1/MAX_ENLARGEMENT of cfg.image_size's: center_crop and
    stretch alike enlarge it more than MAX_ENLARGEMENT times."""
    (width, height), (target_height, target_width) = source_size, cfg.image_size
    return width * MAX_ENLARGEMENT < target_width or height * MAX_ENLARGEMENT < target_height


def _listing(paths: list[str], limit: int = 10) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _listing_why(bad: dict[str, str], root: Path | str) -> str:
    """Unreadable files by their path under root, each with its reason where known (an old cache has none)."""
    def shown(path: str) -> str:
        name = path.removeprefix(f"{Path(root)}{os.sep}")
        return f"{name} ({bad[path]})" if bad.get(path) else name

    return _listing([shown(path) for path in bad])


def _unreadable(bad: dict[str, str], total: int, root: Path, names: Settings) -> DataError:
    return DataError(
        f"{len(bad)} of {total} image(s) under {root} could not be read: {_listing_why(bad, root)}. "
        f"{_too_large_advice(bad)}Delete or replace them, or set {names.skip_bad}: true "
        f"(--set {names.skip_bad}=true) to go on without them."
    )


def _too_large_advice(bad: dict[str, str]) -> str:
    """One sentence for all the files Pillow found too large, so the list keeps one short reason per file."""
    if not any(why.startswith("too large") for why in bad.values()):
        return ""
    return (
        "Pillow refuses images over its limit as a guard against decompression bombs: shrink those (every image is "
        "resized anyway). "
    )


def _reported(images: DecodedImages, cfg: DataConfig, names: Settings) -> DecodedImages:
    """What a run hears about its images, whether decoded now or read from the cache."""
    _report_skipped(images, cfg, names)
    _report_small(images, cfg, names)
    return images


def _report_skipped(images: DecodedImages, cfg: DataConfig, names: Settings) -> None:
    """A cache written with skip_bad: true still holds the bad list, so skip_bad: false fails the same way."""
    bad = {path: images.reasons.get(path, "") for path in images.skipped}
    if bad and not cfg.skip_bad:
        raise _unreadable(bad, len(images.files) + len(bad), cfg.root, names)
    if bad:
        warnings.warn(
            f"skipped {plural(len(bad), 'unreadable image')} ({names.skip_bad} is true): "
            f"{_listing_why(bad, cfg.root)}. {_too_large_advice(bad)}".rstrip(),
            stacklevel=4,
        )


def _report_small(images: DecodedImages, cfg: DataConfig, names: Settings) -> None:
    """One warning for all the images far smaller than image_size (a folder of thumbnails, an icon, a 1-pixel line)."""
    if not images.small:
        return
    height, width = cfg.image_size
    examples = [f"{file} ({pixel_size(size[1], size[0])})" for file, size in itertools.islice(images.small.items(), 3)]
    more = f" and {len(images.small) - 3} more" if len(images.small) > 3 else ""
    smaller = f" or a smaller {names.image_size}" if names.image_size else ""
    one = len(images.small) == 1
    warnings.warn(
        f"{len(images.small)} of {plural(len(images.files), 'image')} under {cfg.root} {'is' if one else 'are'} far "
        f"smaller than the {pixel_size(height, width)} {'it is' if one else 'they are'} resized to (a side under "
        f"1/{MAX_ENLARGEMENT} of it), so {'it trains' if one else 'they train'} as blur: {', '.join(examples)}{more}. "
        f"Use larger images{smaller}, or remove {'it' if one else 'these'}.",
        stacklevel=4,
    )


def _write_cache(path: Path, images: DecodedImages, root: Path, cfg: DataConfig) -> bool:
    metadata = {
        "classes": json.dumps(images.classes),
        "files": json.dumps(images.files),
        "skipped": json.dumps(images.skipped),
        "reasons": json.dumps(images.reasons),
        "small": json.dumps(images.small),
        "source": _source(root, cfg),  # what prune_cache compares
    }
    tensors = {"images": images.images.contiguous(), "labels": images.labels}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return True
    except OSError as exc:  # a full or read-only disk included (checkpoint.StorageError): the cache is optional
        clash = file_in_the_way(path.parent)
        reason = f"{clash} is a file, not a folder" if clash else os.strerror(exc.errno) if exc.errno else exc
        warnings.warn(
            f"could not write the data cache {path} ({reason}); the next run decodes again. Set data.cache_dir "
            f"(or $VAEGEN_CACHE) to a folder you can write to.",
            stacklevel=3,
        )
        return False


def _source(root: Path, cfg: DataConfig) -> str:
    """The folder and the transform an entry was decoded from and with: one folder decoded the same way needs
    one entry, its newest; a fresh clone of a repository, or a changed file, makes a new one."""
    # a cache folder shared between machines (an NFS home) holds folders that exist on other machines only
    return json.dumps({"root": str(Path(root).resolve()), "host": socket.gethostname(), "size": list(cfg.image_size),
                       "channels": cfg.channels, "resize": cfg.resize})


def prune_cache(cache_dir: Path, newest: Path) -> list[Path]:
    """Remove the entries `newest` replaces (same folder, same transform, same machine) and those of this
    machine's folders that no longer exist, then what was computed from entries that are gone. Entries from
    before their source was recorded, and files vaegen did not name, are left alone. Returns the removed files."""
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
    """Whether an entry's folder is known to be gone: on this machine, and missing (not merely unreadable)."""
    try:
        recorded = json.loads(source)
        if recorded.get("host") != socket.gethostname():
            return False
        return not S_ISDIR(os.stat(recorded["root"]).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError, KeyError, TypeError):  # unreadable, or a source this version did not write
        return False


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

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
        metadata = _metadata(path)
        tensors = load_file(str(path))
        return DecodedImages(
            images=tensors["images"],
            labels=tensors["labels"],
            classes=json.loads(metadata["classes"]),
            files=json.loads(metadata["files"]),
            skipped=json.loads(metadata["skipped"]),
            fingerprint=fingerprint,
            reasons=json.loads(metadata.get("reasons", "{}")),  # entries written before reasons were kept have none
            small=json.loads(metadata.get("small", "{}")),
        )
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
    train_idx = torch.cat(train_idx).sort().values
    val_idx = torch.cat(val_idx).sort().values
    return Splits(_subset(images, train_idx), _subset(images, val_idx))


def _subset(images: DecodedImages, idx: torch.Tensor) -> DecodedImages:
    return dataclasses.replace(
        images, images=images.images[idx], labels=images.labels[idx], files=[images.files[i] for i in idx.tolist()]
    )


def to_device(splits: Splits, device: torch.device) -> Splits:
    """Both splits' uint8 images and labels on `device` (decoded once, copied once)."""
    move = lambda part: dataclasses.replace(part, images=part.images.to(device), labels=part.labels.to(device))  # noqa: E731
    return Splits(move(splits.train), move(splits.val))


def load_splits(cfg: DataConfig, seed: int, names: Settings = TRAIN_SETTINGS) -> Splits:
    """The decoded images, split; `names` spells the settings the errors point at (training's, `vaegen test`'s or
    a sweep's)."""
    splits = split(load_images(cfg, names=names), cfg.val_fraction, seed)
    if len(splits.train.images) == 0:
        raise DataError(f"{names.root} {cfg.root} leaves no training images after the validation split.")
    if cfg.val_fraction > 0 and len(splits.val.images) == 0:
        raise DataError(
            f"{names.root} {cfg.root} is too small for a validation split (need at least 2 images per class); "
            f"add images or {names.too_small_for_val}."
        )
    return splits


def batches(
    images: DecodedImages,
    batch_size: int,
    generator: torch.Generator | None = None,
    hflip: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches of (images, labels). With a generator: shuffled, full batches only, optional flips.

    Training drops the last partial batch because a batch of one breaks BatchNorm and small
    tail batches give noisy steps; when the split is smaller than a batch it is one batch.
    """
    n = len(images.images)
    if generator is None:
        for start in range(0, n, batch_size):
            yield images.images[start : start + batch_size], images.labels[start : start + batch_size]
        return
    # drawn on the host from the seeded generator, whatever the device, so every placement of the
    # data sees the same batches; moved to the data's device once per epoch, not once per step
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
    return max(1, n // batch_size) if n >= batch_size else 1


def to_input(images_u8: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 images as the float [0, 1] batch a model takes, on `device`."""
    x = images_u8.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
