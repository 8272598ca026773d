"""vaegen.data.dataset: scanning image folders, decoding once into a cached uint8 tensor, splitting, batching.

Every image folder is built in tmp_path with PIL (lossless PNG/TIFF unless a test is about
JPEG), one solid colour per class so decoded pixel values can be checked, and every
DataConfig passes cache_dir=tmp_path/"cache" so no test touches ~/.cache.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaegen.data.dataset as data
from vaegen.config import DataConfig
from vaegen.data.dataset import DecodedImages, batches, decode_image, load_images, load_splits, scan_folder, split
from vaegen.errors import DataError

# a config that lost its cache_dir writes into tmp_path, never ~/.cache
pytestmark = pytest.mark.usefixtures("default_cache_elsewhere")

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
CLASS_COLOURS = {"cat": RED, "dog": GREEN, "eel": BLUE}


# ---------------------------------------------------------------------------------------
# helpers and fixtures


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def solid(path: Path, colour=RED, size=(20, 20), mode="RGB") -> Path:
    return save(path, Image.new(mode, size, colour))


def make_classes(root: Path, counts: dict[str, int]) -> Path:
    """An ImageFolder: root/<class>/<i>.png, each class one solid colour from CLASS_COLOURS."""
    for name, count in counts.items():
        for i in range(count):
            solid(root / name / f"{i}.png", CLASS_COLOURS[name])
    return root


def make_cfg(tmp_path: Path, root: Path, **overrides) -> DataConfig:
    values = {"root": root, "image_size": (16, 16), "cache_dir": tmp_path / "cache", **overrides}
    return DataConfig(**values)


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("*.safetensors"))


def close_to(tensor: torch.Tensor, value, tol: int = 1) -> bool:
    """Every pixel within tol of value; channels are dim -3 of [..., C, H, W], or dim 0 of a [C, W] column."""
    expected = torch.tensor(value, dtype=torch.int16).view(-1, *([1] * min(tensor.dim() - 1, 2)))
    return bool(((tensor.to(torch.int16) - expected).abs() <= tol).all())


@pytest.fixture
def decoded_paths(monkeypatch) -> list[Path]:
    """Replace vaegen.data.dataset.decode_with_size, load_images' decoder, by a wrapper recording every path it decodes."""
    calls: list[Path] = []
    lock = threading.Lock()
    real = data.decode_with_size

    def counting(path, cfg):
        with lock:
            calls.append(Path(path))
        return real(path, cfg)

    monkeypatch.setattr(data, "decode_with_size", counting)
    return calls


@pytest.fixture
def pets(tmp_path) -> Path:
    """cat: 3 red, dog: 2 green; 5 images."""
    return make_classes(tmp_path / "pets", {"cat": 3, "dog": 2})


def synthetic(counts: list[int], channels: int = 1, hw=(2, 3)) -> DecodedImages:
    """Image i holds the value i everywhere, so subsets and batches can be traced back to their source."""
    labels = torch.cat([torch.full((n,), k, dtype=torch.int64) for k, n in enumerate(counts)])
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, channels, *hw).contiguous()
    return DecodedImages(
        images=images,
        labels=labels,
        classes=[f"c{k}" for k in range(len(counts))],
        files=[f"{i}.png" for i in range(n)],
        skipped=[],
        fingerprint="synthetic",
    )


def ids(images: DecodedImages) -> list[int]:
    return [int(f.split(".")[0]) for f in images.files]


# ---------------------------------------------------------------------------------------
# scan_folder


def test_scan_imagefolder_sorts_classes_and_labels_files(tmp_path):
    root = tmp_path / "zoo"
    for name in ["zebra", "apple", "mango"]:  # created out of order
        for stem in ["b", "a"]:
            solid(root / name / f"{stem}.png")
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "mango" / "readme.md").write_text("not an image")

    index = scan_folder(root)

    assert index.classes == ["apple", "mango", "zebra"]
    assert [str(p.relative_to(root)) for p in index.files] == [
        "apple/a.png", "apple/b.png", "mango/a.png", "mango/b.png", "zebra/a.png", "zebra/b.png",
    ]
    assert index.labels == [0, 0, 1, 1, 2, 2]
    assert index.root == root


def test_scan_flat_folder_is_one_class_named_after_folder(tmp_path):
    root = tmp_path / "flowers"
    for stem in ["c", "a", "b"]:
        solid(root / f"{stem}.png")
    solid(root / "d.JPG")  # extensions are case-insensitive
    (root / "notes.txt").write_text("ignored")

    index = scan_folder(root)

    assert index.classes == ["flowers"]
    assert [p.name for p in index.files] == ["a.png", "b.png", "c.png", "d.JPG"]
    assert index.labels == [0, 0, 0, 0]


def test_scan_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such-folder"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        scan_folder(missing)


def test_scan_root_that_is_a_file_is_an_error(tmp_path):
    file = solid(tmp_path / "single.png")
    with pytest.raises(DataError, match=re.escape(str(file))):
        scan_folder(file)


@pytest.mark.parametrize("contents", [[], ["notes.txt", "data.csv"]])
def test_scan_folder_without_images_is_an_error(tmp_path, contents):
    root = tmp_path / "empty"
    root.mkdir()
    for name in contents:
        (root / name).write_text("x")
    with pytest.raises(DataError, match="holds no images"):
        scan_folder(root)


def test_scan_class_folder_without_images_names_that_class(tmp_path):
    root = make_classes(tmp_path / "pets", {"cat": 2, "dog": 1})
    (root / "hollow").mkdir()
    (root / "hollow" / "notes.txt").write_text("no images here")

    with pytest.raises(DataError, match="hollow") as info:
        scan_folder(root)
    message = str(info.value)
    assert "cat" not in message and "dog" not in message


def test_scan_warns_about_loose_images_next_to_class_folders(tmp_path, pets):
    solid(pets / "stray.png")
    with pytest.warns(UserWarning, match="stray.png"):
        index = scan_folder(pets)
    assert all(p.name != "stray.png" for p in index.files)
    assert len(index.files) == 5


def relative(index) -> list[str]:
    return [p.relative_to(index.root).as_posix() for p in index.files]


def test_hidden_files_and_folders_are_skipped_at_any_depth(tmp_path):
    root = make_classes(tmp_path / "pets", {"cat": 2, "dog": 1})
    solid(root / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png")  # once trained as a third cat
    (root / "cat" / ".thumbs").mkdir()
    (root / "cat" / ".thumbs" / "0.jpg").write_text("thumbnail cache")  # once stopped the run as unreadable
    solid(root / "dog" / "deeper" / "1.png", GREEN)
    solid(root / "dog" / "deeper" / ".cache" / "more" / "2.png")
    solid(root / "dog" / ".hidden.png")
    solid(root / ".trash" / "eel" / "0.png")

    index = scan_folder(root)

    assert index.classes == ["cat", "dog"]
    assert relative(index) == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/deeper/1.png"]
    assert load_images(make_cfg(tmp_path, root)).labels.tolist() == [0, 0, 1, 1]


def test_symlinked_folders_back_into_the_data_are_skipped_with_one_warning(tmp_path):
    root = make_classes(tmp_path / "pets", {"cat": 3, "dog": 2})
    outside = make_classes(tmp_path / "disk2", {"eel": 1}) / "eel"
    (root / "all").symlink_to(root)  # `ln -s . all`: once a class repeating every image
    (root / "cat" / "up").symlink_to(tmp_path)  # above the data: a loop
    (root / "dog" / "again").symlink_to(root / "cat")  # inside the data: cat's images twice
    (root / "eel").symlink_to(outside)  # a class on another disk: read
    (root / "dog" / "eels").symlink_to(outside)  # ... and the same folder again: read once

    with pytest.warns(UserWarning) as record:
        images = load_images(make_cfg(tmp_path, root))

    assert images.classes == ["cat", "dog", "eel"]
    assert images.files == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "eel/0.png"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 2]
    said = [str(w.message) for w in record if "symlink" in str(w.message)]
    assert len(said) == 1, said
    assert all(name in said[0] for name in ["all", "cat/up", "dog/again", "dog/eels"])
    assert "4 symlinked folders" in said[0]


def test_symlinked_folders_outside_the_data_are_read_with_their_subfolders(tmp_path):
    root = make_classes(tmp_path / "pets", {"cat": 1})
    eel = make_classes(tmp_path / "disk2", {"eel": 1}) / "eel"
    solid(eel / "young" / "0.png", BLUE)
    solid(tmp_path / "extra" / "9.png")
    (root / "eel").symlink_to(eel)  # a class folder linked in from another disk
    (root / "cat" / "more").symlink_to(tmp_path / "extra")  # a linked subfolder of a class

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = scan_folder(root)

    assert index.classes == ["cat", "eel"]
    assert relative(index) == ["cat/0.png", "cat/more/9.png", "eel/0.png", "eel/young/0.png"]
    assert index.labels == [0, 0, 1, 1]


def test_a_flat_folder_with_a_link_to_itself_stays_one_class(tmp_path):
    root = tmp_path / "flowers"
    for stem in ["a", "b"]:
        solid(root / f"{stem}.png")
    (root / "again").symlink_to(".")

    with pytest.warns(UserWarning, match="1 symlinked folder .*again"):
        index = scan_folder(root)

    assert index.classes == ["flowers"]
    assert relative(index) == ["a.png", "b.png"]


# ---------------------------------------------------------------------------------------
# load_images: shapes, dtypes, values, resizing


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_size", [(16, 16), (16, 12)])
def test_load_images_shape_dtype_and_labels(tmp_path, pets, image_size, channels):
    result = load_images(make_cfg(tmp_path, pets, image_size=image_size, channels=channels))

    height, width = image_size
    assert result.images.dtype == torch.uint8
    assert tuple(result.images.shape) == (5, channels, height, width)
    assert result.labels.dtype == torch.int64
    assert result.labels.tolist() == [0, 0, 0, 1, 1]
    assert result.classes == ["cat", "dog"]
    assert result.files == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]
    assert result.skipped == []


def test_load_images_decodes_class_colours(tmp_path):
    root = make_classes(tmp_path / "rgb", {"cat": 2, "dog": 2, "eel": 2})
    result = load_images(make_cfg(tmp_path, root, channels=3))
    for label, name in enumerate(result.classes):
        chosen = result.images[result.labels == label]
        assert len(chosen) == 2
        for image in chosen:
            assert close_to(image, CLASS_COLOURS[name]), (name, image[:, 0, 0])


def test_load_images_red_in_one_channel_is_its_luma(tmp_path):
    root = tmp_path / "reds"
    solid(root / "r.png", RED)
    result = load_images(make_cfg(tmp_path, root, channels=1))
    assert result.images.shape == (1, 1, 16, 16)
    assert close_to(result.images, [76])  # ITU-R 601 luma: 0.299 * 255


def banded(path: Path) -> Path:
    """40 wide x 20 high: the outer quarters white, the middle half black."""
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :10] = 255
    array[:, 30:] = 255
    return save(path, Image.fromarray(array, "RGB"))


def test_center_crop_keeps_the_middle_of_a_wide_image(tmp_path):
    root = tmp_path / "wide"
    banded(root / "wide.png")
    image = load_images(make_cfg(tmp_path, root, resize="center_crop")).images[0]
    # the centre 20x20 of the 40x20 image is black; bicubic support only lets a little white in at the rim
    assert image.shape == (3, 16, 16)
    assert close_to(image[:, :, 1:-1], [0, 0, 0], tol=2)
    assert close_to(image, [0, 0, 0], tol=20)


def test_stretch_squeezes_a_wide_image(tmp_path):
    root = tmp_path / "wide"
    banded(root / "wide.png")
    image = load_images(make_cfg(tmp_path, root, resize="stretch")).images[0]
    # the whole width is squeezed into 16 columns: white edges, black middle
    assert image.shape == (3, 16, 16)
    assert close_to(image[:, :, :2], [255, 255, 255], tol=2)
    assert close_to(image[:, :, -2:], [255, 255, 255], tol=2)
    assert close_to(image[:, :, 6:10], [0, 0, 0], tol=2)


def test_center_crop_and_stretch_agree_on_the_aspect_of_a_non_square_target(tmp_path):
    """image_size is (height, width): a 20 high x 40 wide image fits (8, 16) without cropping."""
    root = tmp_path / "wide"
    banded(root / "wide.png")
    crop = load_images(make_cfg(tmp_path, root, image_size=(8, 16), resize="center_crop")).images
    stretch = load_images(make_cfg(tmp_path, root, image_size=(8, 16), resize="stretch")).images
    assert crop.shape == stretch.shape == (1, 3, 8, 16)
    assert torch.equal(crop, stretch)
    assert close_to(crop[0, :, :, 0], [255, 255, 255], tol=2)
    assert close_to(crop[0, :, :, 8], [0, 0, 0], tol=2)


# ---------------------------------------------------------------------------------------
# mode conversion: 20x20 (or 20 high x 30 wide) sources decoded at their own size, so values are exact


def half_and_half(mode: str, left, right, size=(20, 20)) -> Image.Image:
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))  # 0: red, 1: blue
    image.paste(1, (0, 0, 10, 20))  # left half index 1 ...
    image.info["transparency"] = 1  # ... which is transparent
    return image


MODE_CASES = {
    # name: (image, file name, channels, expected left half, expected right half)
    "cmyk": (half_and_half("CMYK", (0, 255, 255, 0), (0, 0, 0, 255)), "x.tiff", 3, RED, BLACK),
    "rgba": (half_and_half("RGBA", (0, 0, 0, 0), (0, 0, 255, 255)), "x.png", 3, WHITE, BLUE),
    "palette-transparency": (palette_with_transparency(), "x.png", 3, WHITE, RED),
    "la-gray": (half_and_half("LA", (0, 0), (50, 255)), "x.png", 1, (255,), (50,)),
    "la-rgb": (half_and_half("LA", (0, 0), (50, 255)), "x.png", 3, WHITE, (50, 50, 50)),
    "l-into-rgb": (half_and_half("L", 100, 200), "x.png", 3, (100, 100, 100), (200, 200, 200)),
    "rgb-into-gray": (half_and_half("RGB", RED, WHITE), "x.png", 1, (76,), (255,)),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_mode_conversion(tmp_path, case):
    image, name, channels, left, right = MODE_CASES[case]
    path = save(tmp_path / case / name, image)
    with Image.open(path) as reopened:  # the mode survives the round trip through the file
        assert reopened.mode == image.mode

    array = decode_image(path, make_cfg(tmp_path, path.parent, image_size=(20, 20), channels=channels))

    assert array.dtype == np.uint8
    assert array.shape == (channels, 20, 20)
    assert (array[:, :, :10] == np.array(left, np.uint8)[:, None, None]).all(), array[:, 0, :10]
    assert (array[:, :, 10:] == np.array(right, np.uint8)[:, None, None]).all(), array[:, 0, 10:]


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_gray_scales_to_eight_bits(tmp_path, channels):
    values = [0, 16384, 32768, 65535]
    array = np.zeros((20, 40), np.uint16)
    for band, value in enumerate(values):
        array[:, band * 10 : (band + 1) * 10] = value
    path = save(tmp_path / "deep" / "g16.png", Image.fromarray(array))
    with Image.open(path) as reopened:
        assert reopened.mode == "I;16"

    decoded = decode_image(path, make_cfg(tmp_path, path.parent, image_size=(20, 40), channels=channels))

    assert decoded.dtype == np.uint8 and decoded.shape == (channels, 20, 40)
    # 65535 -> 255, 0 -> 0, and the middle scales linearly (it does not clip to 255)
    assert [int(decoded[0, 0, band * 10]) for band in range(4)] == [0, 64, 128, 255]
    for band in range(4):
        assert (decoded[:, :, band * 10 : (band + 1) * 10] == decoded[0, 0, band * 10]).all()


def test_mixed_modes_load_together(tmp_path):
    root = tmp_path / "mixed"
    for case, (image, name, _, _, _) in MODE_CASES.items():
        save(root / f"{case}{Path(name).suffix}", image)
    save(root / "g16.png", Image.fromarray(np.full((20, 20), 65535, np.uint16)))
    save(root / "gray.png", Image.new("L", (20, 20), 100))

    result = load_images(make_cfg(tmp_path, root, image_size=(16, 16), channels=3))

    assert result.skipped == []
    assert tuple(result.images.shape) == (len(MODE_CASES) + 2, 3, 16, 16)
    by_name = dict(zip(result.files, result.images))
    assert close_to(by_name["g16.png"], [255, 255, 255])
    assert close_to(by_name["gray.png"], [100, 100, 100])
    assert close_to(by_name["rgba.png"][:, :, :6], [255, 255, 255], tol=2)
    assert close_to(by_name["rgba.png"][:, :, -6:], [0, 0, 255], tol=2)


# ---------------------------------------------------------------------------------------
# the on-disk cache


def test_second_load_decodes_nothing(tmp_path, pets, decoded_paths):
    cfg = make_cfg(tmp_path, pets)
    first = load_images(cfg)
    assert len(decoded_paths) == 5
    assert sorted(p.name for p in decoded_paths) == ["0.png", "0.png", "1.png", "1.png", "2.png"]
    assert len(cache_files(tmp_path)) == 1
    assert not (tmp_path / "env-cache").exists()  # cfg.cache_dir wins over $VAEGEN_CACHE

    decoded_paths.clear()
    second = load_images(cfg)

    assert len(decoded_paths) == 0
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert (second.classes, second.files, second.skipped) == (first.classes, first.files, first.skipped)


@pytest.mark.parametrize(
    "change", [{"image_size": (16, 12)}, {"image_size": (12, 16)}, {"channels": 1}, {"resize": "stretch"}]
)
def test_a_different_transform_decodes_again(tmp_path, pets, decoded_paths, change):
    load_images(make_cfg(tmp_path, pets))
    decoded_paths.clear()

    result = load_images(make_cfg(tmp_path, pets, **change))

    assert len(decoded_paths) == 5
    assert len(cache_files(tmp_path)) == 2
    expected = make_cfg(tmp_path, pets, **change)
    assert tuple(result.images.shape) == (5, expected.channels, *expected.image_size)


def test_touching_a_file_decodes_again(tmp_path, pets, decoded_paths):
    cfg = make_cfg(tmp_path, pets)
    load_images(cfg)
    decoded_paths.clear()

    target = pets / "cat" / "1.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    load_images(cfg)

    assert len(decoded_paths) == 5


def test_replacing_a_file_decodes_the_new_content(tmp_path, pets, decoded_paths):
    cfg = make_cfg(tmp_path, pets)
    before = load_images(cfg)
    decoded_paths.clear()

    target = pets / "cat" / "1.png"
    old_mtime = target.stat().st_mtime_ns
    solid(target, (255, 255, 0), size=(24, 24))  # new content and size
    os.utime(target, ns=(old_mtime + 5_000_000_000, old_mtime + 5_000_000_000))
    after = load_images(cfg)

    assert len(decoded_paths) == 5
    assert close_to(before.images[1], RED)
    assert close_to(after.images[1], (255, 255, 0))
    assert torch.equal(after.images[[0, 2, 3, 4]], before.images[[0, 2, 3, 4]])


def test_adding_a_file_decodes_again(tmp_path, pets, decoded_paths):
    cfg = make_cfg(tmp_path, pets)
    load_images(cfg)
    decoded_paths.clear()

    solid(pets / "dog" / "2.png", GREEN)
    result = load_images(cfg)

    assert len(decoded_paths) == 6
    assert len(result.images) == 6
    assert result.files[-1] == "dog/2.png"
    assert result.labels.tolist() == [0, 0, 0, 1, 1, 1]


def derived(tmp_path: Path, folder: str, name: str, made_from: str | None) -> Path:
    """A cache file computed from a decoded entry, as vaegen.evaluation.frechet and vaegen.evaluation.class_fidelity write them."""
    from safetensors.torch import save_file

    path = tmp_path / "cache" / folder / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(2)}, str(path), metadata=None if made_from is None else {data.FROM_ENTRY: made_from})
    return path


def test_a_changed_folder_replaces_its_cache_entry_and_what_was_computed_from_it(tmp_path, pets):
    cfg = make_cfg(tmp_path, pets)
    old = load_images(cfg)
    other_size = load_images(make_cfg(tmp_path, pets, image_size=(8, 8)))  # same folder, another transform
    old_features = derived(tmp_path, "features", "old", old.fingerprint)
    old_classifier = derived(tmp_path, "classifiers", "old", old.fingerprint)
    kept_features = derived(tmp_path, "features", "other-size", other_size.fingerprint)
    unnamed = derived(tmp_path, "features", "unnamed", None)  # from before entries were named: left alone

    solid(pets / "dog" / "2.png", GREEN)
    new = load_images(cfg)

    assert new.fingerprint != old.fingerprint
    assert [f.name for f in cache_files(tmp_path)] == sorted(
        f"pets-{h}x{h}x3-{fp}.safetensors" for h, fp in [(16, new.fingerprint), (8, other_size.fingerprint)]
    )
    assert not old_features.exists() and not old_classifier.exists()
    assert kept_features.exists() and unnamed.exists()


def test_entries_of_folders_that_are_gone_are_pruned_when_another_is_decoded(tmp_path):
    gone = make_classes(tmp_path / "clone1", {"cat": 1, "dog": 1})
    before = load_images(make_cfg(tmp_path, gone))
    gone_features = derived(tmp_path, "features", "gone", before.fingerprint)
    legacy = tmp_path / "cache" / f"old-16x16x3-{'0' * 20}.safetensors"  # written before entries named their folder
    legacy.write_bytes(cache_files(tmp_path)[0].read_bytes().replace(b'"source"', b'"sourcX"'))
    stranger = tmp_path / "cache" / "notes.safetensors"  # not a name vaegen gives
    stranger.write_bytes(b"not ours")
    for path in (gone / "cat" / "0.png", gone / "dog" / "0.png"):
        path.unlink()
    for folder in (gone / "cat", gone / "dog", gone):
        folder.rmdir()

    load_images(make_cfg(tmp_path, make_classes(tmp_path / "clone2", {"cat": 1, "dog": 1})))

    assert [f.name for f in cache_files(tmp_path)] == sorted(
        [legacy.name, stranger.name, next(f.name for f in cache_files(tmp_path) if f.name.startswith("clone2-"))]
    )
    assert not gone_features.exists()


def test_only_this_machines_gone_folders_are_pruned(tmp_path, pets):
    """A cache folder shared between machines holds folders that exist elsewhere: those entries stay."""
    import json
    import socket

    from safetensors.torch import save_file

    def entry(name: str, host: str) -> Path:
        path = tmp_path / "cache" / f"{name}-16x16x3-{'0' * 20}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        source = {"root": str(tmp_path / "nowhere" / name), "host": host, "size": [16, 16], "channels": 3, "resize": "center_crop"}
        save_file({"images": torch.zeros(1, 3, 16, 16, dtype=torch.uint8)}, str(path), metadata={"source": json.dumps(source)})
        return path

    elsewhere, here = entry("elsewhere", "another-machine"), entry("here", socket.gethostname())
    load_images(make_cfg(tmp_path, pets))
    assert elsewhere.exists() and not here.exists()


def test_a_cache_hit_prunes_nothing(tmp_path, pets):
    cfg = make_cfg(tmp_path, pets)
    first = load_images(cfg)
    orphan = derived(tmp_path, "features", "orphan", "f" * 20)

    assert load_images(cfg).fingerprint == first.fingerprint
    assert orphan.exists()  # pruning runs only when a new entry is written


@pytest.mark.parametrize("channels", [1, 3])
def test_decoded_and_cached_images_are_the_same_tensor_in_the_same_layout(tmp_path, pets, channels):
    # a channels-last batch from the decoder against a contiguous one from the cache trained differently (the
    # quickstart ended at FD 121.5 on a cold cache, 118.0 on a warm one)
    cfg = make_cfg(tmp_path, pets).model_copy(update={"channels": channels})
    decoded, cached = load_images(cfg).images, load_images(cfg).images
    assert torch.equal(decoded, cached)
    assert decoded.is_contiguous() and cached.is_contiguous() and decoded.stride() == cached.stride()


def test_corrupted_cache_is_ignored_with_a_warning_and_rebuilt(tmp_path, pets, decoded_paths):
    cfg = make_cfg(tmp_path, pets)
    first = load_images(cfg)
    [cache] = cache_files(tmp_path)
    cache.write_bytes(b"\x00garbage, not a safetensors file" * 10)
    decoded_paths.clear()

    with pytest.warns(UserWarning, match="ignoring unreadable data cache"):
        rebuilt = load_images(cfg)

    assert len(decoded_paths) == 5
    assert torch.equal(rebuilt.images, first.images)
    assert torch.equal(rebuilt.labels, first.labels)

    decoded_paths.clear()
    third = load_images(cfg)  # the rebuilt cache is good again
    assert len(decoded_paths) == 0
    assert torch.equal(third.images, first.images)


# ---------------------------------------------------------------------------------------
# unreadable images


@pytest.fixture
def with_bad(tmp_path) -> Path:
    """3 good PNGs, a truncated JPEG and a text file named .jpg, in a flat folder."""
    root = tmp_path / "shots"
    for i in range(3):
        solid(root / f"good{i}.png", BLUE)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = save(tmp_path / "full.jpg", Image.fromarray(noise, "RGB")).read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "notes.jpg").write_text("these are my notes, not a picture\n")
    return root


def test_unreadable_images_are_an_error_naming_them(tmp_path, with_bad):
    with pytest.raises(DataError) as info:
        load_images(make_cfg(tmp_path, with_bad))
    message = str(info.value)
    assert "truncated.jpg" in message
    assert "notes.jpg" in message
    assert "set data.skip_bad: true (--set data.skip_bad=true)" in message
    assert "good0.png" not in message


def test_skip_bad_loads_the_rest_and_reports_the_skipped(tmp_path, with_bad, decoded_paths):
    cfg = make_cfg(tmp_path, with_bad, skip_bad=True)
    with pytest.warns(UserWarning, match="skipped 2") as record:
        result = load_images(cfg)

    text = " ".join(str(w.message) for w in record)
    assert "truncated.jpg" in text and "notes.jpg" in text
    assert sorted(Path(p).name for p in result.skipped) == ["notes.jpg", "truncated.jpg"]
    assert result.files == ["good0.png", "good1.png", "good2.png"]
    assert tuple(result.images.shape) == (3, 3, 16, 16)
    assert close_to(result.images, BLUE)

    # from the cache: the skipped files are still reported
    decoded_paths.clear()
    with pytest.warns(UserWarning, match="truncated.jpg"):
        cached = load_images(cfg)
    assert len(decoded_paths) == 0
    assert cached.skipped == result.skipped
    assert cached.files == result.files


@pytest.mark.filterwarnings("ignore:skipped 2 unreadable")
def test_skip_bad_false_still_fails_after_a_skip_bad_run(tmp_path, with_bad):
    with pytest.warns(UserWarning):
        load_images(make_cfg(tmp_path, with_bad, skip_bad=True))
    with pytest.raises(DataError, match="truncated.jpg"):
        load_images(make_cfg(tmp_path, with_bad, skip_bad=False))


def test_all_images_unreadable_is_an_error_even_with_skip_bad(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.jpg").write_text("no")
    (root / "b.png").write_text("no")
    with pytest.raises(DataError, match="none of the 2 images under .* could be read .*Check that they are image files"):
        load_images(make_cfg(tmp_path, root, skip_bad=True))


def test_a_cache_folder_that_is_a_file_is_named_and_the_data_still_loads(tmp_path, with_bad):
    (tmp_path / "not-a-folder").write_text("")
    cfg = make_cfg(tmp_path, with_bad, skip_bad=True, cache_dir=tmp_path / "not-a-folder")
    with pytest.warns(UserWarning) as record:
        images = load_images(cfg)
    said = " ".join(str(w.message) for w in record)
    assert f"({tmp_path / 'not-a-folder'} is a file, not a folder)" in said and "Set data.cache_dir" in said  # once "(File exists)"
    assert "skipped 2 unreadable images (data.skip_bad is true)" in said and len(images.files) == 3


def test_a_class_left_without_readable_images_by_skip_bad_is_an_error(tmp_path):
    root = tmp_path / "classes"
    for i in range(2):
        solid(root / "A" / f"good{i}.png", BLUE)
    (root / "B").mkdir()
    (root / "B" / "a.jpg").write_text("no")  # once trained as an empty class B
    with pytest.raises(DataError, match=r"class folder\(s\) B under .* have no readable image once data.skip_bad drops"):
        load_images(make_cfg(tmp_path, root, skip_bad=True))


@pytest.fixture
def with_huge(with_bad, monkeypatch) -> Path:
    """with_bad plus huge.png, 100x100: over Pillow's decompression-bomb limit once that is lowered to 2 * 64x64
    pixels (the 64x64 truncated JPEG stays at the limit, under Pillow's own warning)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    solid(with_bad / "huge.png", BLUE, size=(100, 100))
    return with_bad


def reasons(text: str) -> dict[str, str]:
    """file name -> the words in brackets after it, in an unreadable-files message."""
    return {name: why for name, why in re.findall(r"(\w+\.\w+) \(([^)]*)\)", text)}


def test_unreadable_images_are_listed_with_why_also_from_the_cache(tmp_path, with_huge, decoded_paths):
    with pytest.raises(DataError) as info:
        load_images(make_cfg(tmp_path, with_huge))
    why = reasons(str(info.value))
    assert why["huge.png"] == "too large: 10,000 pixels, over Pillow's limit of 8,192"
    assert "decompression bomb" in str(info.value) and "shrink" in str(info.value)
    assert why["truncated.jpg"] == "truncated"
    assert why["notes.jpg"].startswith("not an image")

    with pytest.warns(UserWarning, match="skipped 3 unreadable images") as record:
        load_images(make_cfg(tmp_path, with_huge, skip_bad=True))
    assert reasons(str(record[0].message)) == why

    decoded_paths.clear()  # from the cache: the same reasons, nothing decoded
    with pytest.warns(UserWarning, match="skipped 3 unreadable images") as record:
        load_images(make_cfg(tmp_path, with_huge, skip_bad=True))
    assert decoded_paths == [] and reasons(str(record[0].message)) == why
    with pytest.raises(DataError) as info:
        load_images(make_cfg(tmp_path, with_huge))
    assert reasons(str(info.value)) == why


def test_a_long_list_of_unreadable_images_is_cut_short_with_its_reasons(tmp_path):
    root = tmp_path / "junk"
    solid(root / "good.png")
    for i in range(13):
        (root / f"bad{i:02}.png").write_text("no")
    with pytest.raises(DataError) as info:
        load_images(make_cfg(tmp_path, root))
    message = str(info.value)
    assert len(reasons(message)) == 10 and "and 3 more" in message and "bad12.png" not in message


@pytest.mark.filterwarnings("ignore:skipped 2 unreadable")
def test_a_cache_entry_without_reasons_or_sizes_still_loads(tmp_path, with_bad, decoded_paths):
    """An entry written before reasons and source sizes were recorded: read as it is, listing the bad files bare."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    solid(with_bad / "dot.png", size=(1, 1))
    cfg = make_cfg(tmp_path, with_bad, skip_bad=True)
    with pytest.warns(UserWarning, match="far smaller"):
        first = load_images(cfg)
    [entry] = cache_files(tmp_path)
    with safe_open(str(entry), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = {key: value for key, value in handle.metadata().items() if key in {"classes", "files", "skipped", "source"}}
    save_file(tensors, str(entry), metadata=metadata)
    decoded_paths.clear()

    with pytest.warns(UserWarning) as record:
        again = load_images(cfg)

    assert decoded_paths == [] and again.files == first.files and again.skipped == first.skipped
    said = " ".join(str(w.message) for w in record)
    assert "truncated.jpg" in said and "far smaller" not in said


# ---------------------------------------------------------------------------------------
# images far smaller than data.image_size


def test_images_far_smaller_than_the_image_size_warn_once_also_from_the_cache(tmp_path, decoded_paths):
    root = tmp_path / "tiny"
    solid(root / "dot.png", size=(1, 1))
    solid(root / "line.png", size=(1000, 1))
    solid(root / "edge.png", size=(4, 4))  # a quarter of 16: enlarged 4 times, not more
    solid(root / "fine.png", size=(20, 20))

    for run in ("decoded", "cached"):
        decoded_paths.clear()
        with pytest.warns(UserWarning) as record:
            load_images(make_cfg(tmp_path, root))
        said = [str(w.message) for w in record if "smaller" in str(w.message)]
        assert len(said) == 1, (run, said)
        assert "2 of 4 images" in said[0] and "dot.png (1×1 px)" in said[0] and "line.png (1000×1 px)" in said[0]
        assert "edge.png" not in said[0] and "fine.png" not in said[0] and "16×16 px" in said[0]
    assert decoded_paths == []  # the second run read the cache


# ---------------------------------------------------------------------------------------
# split


COUNTS = [10, 7, 3, 2]


def test_split_is_deterministic_per_seed():
    images = synthetic([20, 20])
    a, b, other = split(images, 0.25, seed=0), split(images, 0.25, seed=0), split(images, 0.25, seed=1)
    assert a.val.files == b.val.files and a.train.files == b.train.files
    assert torch.equal(a.val.images, b.val.images)
    assert a.val.files != other.val.files
    assert len(other.val.files) == len(a.val.files) == 10


@pytest.mark.parametrize(
    ("val_fraction", "expected"),
    [
        (0.1, [1, 1, 1, 1]),  # round(0.3)=0 and round(0.2)=0 are raised to 1
        (0.3, [3, 2, 1, 1]),
        (0.8, [8, 6, 2, 1]),  # round(1.6)=2 for the 2-image class is capped to leave 1 for training
    ],
)
def test_split_is_stratified(val_fraction, expected):
    images = synthetic(COUNTS)
    for seed in (0, 1, 2):
        splits = split(images, val_fraction, seed)
        val_counts = torch.bincount(splits.val.labels, minlength=len(COUNTS)).tolist()
        train_counts = torch.bincount(splits.train.labels, minlength=len(COUNTS)).tolist()
        assert val_counts == expected
        assert train_counts == [n - v for n, v in zip(COUNTS, expected)]


@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.5])
def test_split_parts_are_disjoint_cover_everything_and_stay_aligned(val_fraction):
    images = synthetic(COUNTS, channels=3)
    splits = split(images, val_fraction, seed=3)
    train, val = ids(splits.train), ids(splits.val)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(sum(COUNTS)))
    for part in (splits.train, splits.val):
        assert part.classes == images.classes
        assert len(part.images) == len(part.labels) == len(part.files)
        for i, image, label in zip(ids(part), part.images, part.labels):
            assert (image == i).all()  # the image that was at index i
            assert label == images.labels[i]


def test_split_with_zero_val_fraction_has_an_empty_val():
    images = synthetic(COUNTS)
    splits = split(images, 0.0, seed=0)
    assert len(splits.val.files) == 0
    assert tuple(splits.val.images.shape) == (0, *images.images.shape[1:])
    assert splits.val.labels.numel() == 0
    assert ids(splits.train) == list(range(sum(COUNTS)))


def test_split_single_image_class_stays_in_train():
    """round(1 * 0.2) = 0, and a 1-image class is not raised to 1: it gives nothing to val."""
    images = synthetic([5, 1])
    splits = split(images, 0.2, seed=0)
    assert torch.bincount(splits.val.labels, minlength=2).tolist() == [1, 0]
    assert torch.bincount(splits.train.labels, minlength=2).tolist() == [4, 1]


# ---------------------------------------------------------------------------------------
# load_splits


def test_load_splits_tolerates_a_single_image_class_when_others_can_give_val(tmp_path):
    root = make_classes(tmp_path / "pets", {"cat": 1, "dog": 4})
    splits = load_splits(make_cfg(tmp_path, root, val_fraction=0.2), seed=0)
    assert splits.val.labels.tolist() == [1]
    assert "cat/0.png" in splits.train.files
    assert len(splits.train.files) == 4


def test_load_splits_too_small_for_validation_is_an_error(tmp_path):
    root = make_classes(tmp_path / "pets", {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match="too small for a validation split"):
        load_splits(make_cfg(tmp_path, root, val_fraction=0.2), seed=0)


def test_load_splits_single_image_cannot_give_a_validation_split(tmp_path):
    root = tmp_path / "one"
    solid(root / "only.png")
    with pytest.raises(DataError, match="too small for a validation split"):
        load_splits(make_cfg(tmp_path, root, val_fraction=0.6), seed=0)


def test_load_splits_with_zero_val_fraction(tmp_path, pets):
    splits = load_splits(make_cfg(tmp_path, pets, val_fraction=0.0), seed=0)
    assert len(splits.val.files) == 0
    assert len(splits.train.files) == 5


# ---------------------------------------------------------------------------------------
# batches


def test_batches_without_generator_are_in_order_with_a_short_last_batch():
    images = synthetic([6, 4])
    out = list(batches(images, batch_size=4))
    assert [len(x) for x, _ in out] == [4, 4, 2]
    assert [len(y) for _, y in out] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in out]), images.images)
    assert torch.equal(torch.cat([y for _, y in out]), images.labels)
    assert all(x.dtype == torch.uint8 for x, _ in out)


def shuffled_ids(images: DecodedImages, batch_size: int, seed: int, **kwargs) -> list[list[int]]:
    out = batches(images, batch_size, generator=torch.Generator().manual_seed(seed), **kwargs)
    return [x[:, 0, 0, 0].tolist() for x, _ in out]


def test_shuffled_batches_are_full_distinct_and_reproducible():
    images = synthetic([6, 7])  # n = 13
    order = shuffled_ids(images, batch_size=4, seed=0)
    assert [len(b) for b in order] == [4, 4, 4]  # 13 % 4 = 1 image dropped
    flat = [i for b in order for i in b]
    assert len(set(flat)) == 12
    assert set(flat) <= set(range(13))
    assert flat != sorted(flat)  # actually shuffled
    assert shuffled_ids(images, 4, seed=0) == order
    assert shuffled_ids(images, 4, seed=1) != order


def test_shuffled_batches_keep_labels_with_their_images():
    images = synthetic([6, 7])
    for x, y in batches(images, 4, generator=torch.Generator().manual_seed(5)):
        for image, label in zip(x, y):
            assert label == images.labels[int(image[0, 0, 0])]


def test_successive_epochs_differ_and_replay_from_the_seed():
    images = synthetic([16])
    generator = torch.Generator().manual_seed(7)
    epochs = [[x[:, 0, 0, 0].tolist() for x, _ in batches(images, 4, generator=generator)] for _ in range(2)]
    assert epochs[0] != epochs[1]
    replay = torch.Generator().manual_seed(7)
    again = [[x[:, 0, 0, 0].tolist() for x, _ in batches(images, 4, generator=replay)] for _ in range(2)]
    assert again == epochs


@pytest.mark.parametrize("n", [1, 3, 7])
def test_fewer_images_than_a_batch_is_one_batch_of_all(n):
    images = synthetic([n])
    order = shuffled_ids(images, batch_size=8, seed=0)
    assert len(order) == 1
    assert sorted(order[0]) == list(range(n))


def test_hflip_flips_some_images_and_leaves_the_others():
    n = 64
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, 4, 6), dtype=np.uint8))
    images = DecodedImages(
        images=noise, labels=torch.arange(n), classes=["x"], files=[f"{i}" for i in range(n)], skipped=[], fingerprint="noise"
    )
    flipped = kept = 0
    seen = []
    for x, y in batches(images, 16, generator=torch.Generator().manual_seed(0), hflip=True):
        for image, index in zip(x, y.tolist()):
            seen.append(index)
            original = noise[index]
            if torch.equal(image, original):
                kept += 1
            else:
                assert torch.equal(image, original.flip(-1)), "neither the original nor its mirror image"
                flipped += 1
    assert sorted(seen) == list(range(n))
    assert flipped + kept == n
    assert 0 < flipped < n and 0 < kept < n
    assert torch.equal(images.images, noise)  # the source tensor is not flipped in place


def test_no_hflip_leaves_every_image_untouched():
    n = 32
    noise = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, 1, 3, 5), dtype=np.uint8))
    images = DecodedImages(images=noise, labels=torch.arange(n), classes=["x"], files=[""] * n, skipped=[], fingerprint="noise")
    for x, y in batches(images, 8, generator=torch.Generator().manual_seed(0), hflip=False):
        assert torch.equal(x, noise[y])


def test_dark_16_bit_image_is_not_brightened(tmp_path):
    root = tmp_path / "deep"
    root.mkdir()
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint16)).save(root / "dark.png")
    images = load_images(DataConfig(root=root, image_size=8, channels=1, cache_dir=tmp_path / "cache"))
    assert int(images.images.max()) == 1  # 200 / 65535 of full scale, not 200 / 255


def test_single_image_class_stays_in_training_even_at_high_val_fraction():
    images = synthetic([1, 10])
    parts = split(images, 0.6, seed=0)
    assert (parts.train.labels == 0).sum() == 1 and (parts.val.labels == 0).sum() == 0


def test_splits_select_all_is_train_then_val():
    parts = split(synthetic([10, 6]), 0.25, seed=0)
    everything = parts.select("all")
    assert torch.equal(everything.images, torch.cat([parts.train.images, parts.val.images]))
    assert everything.files == parts.train.files + parts.val.files
    assert sorted(ids(everything)) == list(range(16))
    assert parts.select("val") is parts.val and parts.select("train") is parts.train
