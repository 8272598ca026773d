"""The data folder changes between two runs that share a decode cache: the cache is rebuilt, never reused stale."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from helpers import SAMPLE
from PIL import Image, ImageOps

from vaegen.apps.cli import main
from vaegen.config import load_config
from vaegen.data.dataset import decode_image, load_images


@pytest.fixture
def train(tmp_path, tiny_config):
    """train(data_root, name): one epoch on data_root as run `name`, with tmp_path's decode cache; its config."""

    def run(data_root, name):
        config = tiny_config(tmp_path, data={"root": str(data_root)}, train={"epochs": 1}, output={"run_name": name})
        assert main(["train", "--config", str(config)]) == 0
        return load_config(config)

    return run


def data_line(tmp_path, name) -> str:
    log = (tmp_path / "logs" / name / "train.log").read_text()
    return next(line for line in log.splitlines() if line.startswith("data:"))


def test_added_and_removed_images_rebuild_the_cache(tmp_path, train):
    data = tmp_path / "apples"
    shutil.copytree(SAMPLE, data)
    train(data, "before")
    (first_cache,) = (tmp_path / "cache").glob("*.safetensors")
    assert "240 train / 60 val images" in data_line(tmp_path, "before")

    golden = sorted((data / "Golden").iterdir())
    golden[0].unlink()
    golden[1].unlink()
    shutil.copy(sorted((data / "Red").iterdir())[0], data / "Red" / "extra.jpg")
    config = train(data, "after")

    (second_cache,) = (tmp_path / "cache").glob("*.safetensors")  # the same folder's new cache replaces the old one
    assert second_cache != first_cache
    assert "239 train / 60 val images" in data_line(tmp_path, "after")  # 299 images: 2 removed, 1 added
    images = load_images(config.data)  # what the second run trained on (read back from its cache)
    assert len(images.images) == 299
    assert "Red/extra.jpg" in images.files and f"Golden/{golden[0].name}" not in images.files


def test_an_image_rewritten_in_place_with_its_size_and_mtime_kept_is_decoded_again(tmp_path, train):
    data = tmp_path / "apples"
    shutil.copytree(SAMPLE, data)
    config = train(data, "before")
    target = sorted((data / "Golden").iterdir())[0]
    relative = f"Golden/{target.name}"
    before = load_images(config.data)
    old_pixels = before.images[before.files.index(relative)]

    # new pixels (the photo mirrored and darkened) in exactly as many bytes, and the old timestamps put back:
    # the file's name, size and mtime all match what the cache was keyed on
    stat = target.stat()
    with Image.open(target) as photo:
        changed = ImageOps.mirror(photo.convert("RGB")).point(lambda v: v // 2)
    encoded = io.BytesIO()
    changed.save(encoded, format="JPEG", quality=60)
    payload = encoded.getvalue()
    assert len(payload) < stat.st_size
    target.write_bytes(payload + b"\0" * (stat.st_size - len(payload)))  # JPEG readers stop at the end marker
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    train(data, "after")
    after = load_images(config.data)
    new_pixels = after.images[after.files.index(relative)]
    assert np.array_equal(new_pixels.numpy(), decode_image(target, config.data))
    assert (new_pixels.float() - old_pixels.float()).abs().mean() > 20  # really the new picture, not the cached one
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1  # the stale entry is gone
