"""vaegen.data.sources: data.source torchvision and array, data.limit, and the folder's cache key left as it was.

The torchvision dataset is a tiny MNIST written in torchvision's own raw format (the idx files it reads without
checking checksums), so nothing touches the network; the arrays are written with numpy into tmp_path. Every
DataConfig passes cache_dir=tmp_path/"cache" so no test touches ~/.cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from helpers import SAMPLE, SAMPLE_CLASSES
from PIL import Image

import vaegen.data.dataset as data
from vaegen.apps.cli import main
from vaegen.config import DataConfig, config_from_dict
from vaegen.data.dataset import cache_key, fit_image, load_images, load_splits, prune_cache, scan_folder
from vaegen.errors import ConfigError, DataError

# a config that lost its cache_dir writes into tmp_path, never ~/.cache
pytestmark = pytest.mark.usefixtures("default_cache_elsewhere")

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# ---------------------------------------------------------------------------------------
# helpers and fixtures


def write_idx(path: Path, array: np.ndarray) -> None:
    """One file of MNIST's idx format: a magic number (unsigned bytes, ndim), the sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, train: int = 30, test: int = 9) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """root/MNIST/raw as torchvision.datasets.MNIST reads it: 28×28 digits of random noise, labels 0, 1, 2, 0, ..."""
    rng = np.random.default_rng(0)
    written = {}
    for prefix, n in (("train", train), ("t10k", test)):
        images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 3
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        written[prefix] = images, labels
    return written


def gray_faces(n: int = 40, size: int = 16) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size), dtype=np.uint8)


def array_cfg(tmp_path: Path, root: Path, **overrides) -> DataConfig:
    values = {"root": root, "source": "array", "image_size": 16, "channels": 1, "cache_dir": tmp_path / "cache"}
    return DataConfig(**{**values, **overrides})


def mnist_cfg(tmp_path: Path, **overrides) -> DataConfig:
    values = {"root": tmp_path / "tv", "source": "torchvision", "dataset": "MNIST", "image_size": 32, "channels": 1,
              "download": False, "cache_dir": tmp_path / "cache"}
    return DataConfig(**{**values, **overrides})


@pytest.fixture
def fitted(monkeypatch) -> list[int]:
    """Count the images vaegen.data.dataset fits to the configured size (a cache hit fits none)."""
    calls: list[int] = []
    real = data.fit_image

    def counting(image, cfg):
        calls.append(1)
        return real(image, cfg)

    monkeypatch.setattr(data, "fit_image", counting)
    return calls


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message  # one paragraph
    return message


# ---------------------------------------------------------------------------------------
# data.source: array


def test_a_gray_npy_is_one_class_named_after_the_file_with_its_pixels_kept(tmp_path):
    faces = gray_faces()
    np.save(tmp_path / "faces.npy", faces)
    images = load_images(array_cfg(tmp_path, tmp_path / "faces.npy"))
    assert images.images.shape == (40, 1, 16, 16) and images.images.dtype == torch.uint8
    assert torch.equal(images.images[:, 0], torch.from_numpy(faces))  # the configured size: no resampling
    assert images.labels.tolist() == [0] * 40 and images.classes == ["faces"]
    assert images.files[:2] == ["faces[0]", "faces[1]"] and images.skipped == []


def test_npz_labels_become_classes_in_label_order_named_from_its_classes_array(tmp_path):
    labels = np.array([3, 1, 3, 5] * 10)  # no image has label 0, 2 or 4: those are no classes
    np.savez(tmp_path / "faces.npz", x=gray_faces(), y=labels)
    images = load_images(array_cfg(tmp_path, tmp_path / "faces.npz"))
    assert images.classes == ["class_1", "class_3", "class_5"]
    assert images.labels[:4].tolist() == [1, 0, 1, 2]

    names = np.array(["zero", "one", "two", "three", "four", "five"])
    np.savez(tmp_path / "named.npz", images=gray_faces(), labels=labels, classes=names)
    assert load_images(array_cfg(tmp_path, tmp_path / "named.npz")).classes == ["one", "three", "five"]


def test_a_labels_npy_beside_an_npy_gives_the_classes_and_the_split_is_stratified(tmp_path):
    np.save(tmp_path / "faces.npy", gray_faces())
    np.save(tmp_path / "labels.npy", np.arange(40) % 2)
    cfg = array_cfg(tmp_path, tmp_path / "faces.npy", labels=tmp_path / "labels.npy", val_fraction=0.2)
    splits = load_splits(cfg, seed=0)
    assert splits.train.classes == ["class_0", "class_1"]
    assert torch.bincount(splits.val.labels).tolist() == [4, 4] and len(splits.train.images) == 32


def test_channels_first_floats_are_rounded_to_uint8_and_gray_becomes_rgb_when_asked(tmp_path):
    floats = np.random.default_rng(2).random((6, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "rgb.npy", floats)
    images = load_images(array_cfg(tmp_path, tmp_path / "rgb.npy", channels=3)).images
    assert images.shape == (6, 3, 16, 16)
    assert torch.equal(images, torch.from_numpy(np.floor(floats * 255 + 0.5).astype(np.uint8)))

    np.save(tmp_path / "gray.npy", gray_faces(4, size=24))
    rgb = load_images(array_cfg(tmp_path, tmp_path / "gray.npy", channels=3, image_size=32)).images
    assert rgb.shape == (4, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    # resized as an image file is: the folder source's own helper on the same picture
    expected, _ = fit_image(Image.fromarray(gray_faces(4, size=24)[0]), array_cfg(tmp_path, tmp_path / "gray.npy",
                                                                                      channels=3, image_size=32))
    assert torch.equal(rgb[0], torch.from_numpy(np.array(expected)))


def test_the_second_load_of_an_array_decodes_nothing_and_a_rewritten_file_decodes_again(tmp_path, fitted):
    np.save(tmp_path / "faces.npy", gray_faces())
    cfg = array_cfg(tmp_path, tmp_path / "faces.npy")
    first = load_images(cfg)
    assert len(fitted) == 40
    second = load_images(cfg)
    assert len(fitted) == 40 and torch.equal(first.images, second.images) and first.fingerprint == second.fingerprint
    np.save(tmp_path / "faces.npy", 255 - gray_faces())
    assert torch.equal(load_images(cfg).images, 255 - first.images) and len(fitted) == 80


def test_an_array_entry_is_kept_while_its_file_exists_and_pruned_once_it_is_gone(tmp_path):
    np.save(tmp_path / "faces.npy", gray_faces())
    load_images(array_cfg(tmp_path, tmp_path / "faces.npy"))
    (entry,) = (tmp_path / "cache").glob("faces-*.safetensors")
    np.save(tmp_path / "other.npy", gray_faces(8))
    load_images(array_cfg(tmp_path, tmp_path / "other.npy"))  # decoding another source prunes the gone ones only
    assert entry.is_file()
    (tmp_path / "faces.npy").unlink()
    newest = next((tmp_path / "cache").glob("other-*.safetensors"))
    assert prune_cache(tmp_path / "cache", newest) == [entry]


@pytest.mark.parametrize("array, labels, says", [
    (np.zeros((4, 2, 16, 16), np.uint8), None, "4×2×16×16"),  # 4 axes, the channel count neither 1 nor 3
    (np.zeros((16, 16), np.uint8), None, "16×16"),  # one image without its N axis
    (np.full((4, 16, 16), 1.5, np.float32), None, "from 1.5 to 1.5"),
    (np.where(np.eye(16, dtype=bool), np.nan, 0.5)[None].repeat(4, 0).astype(np.float32), None, "NaN"),
    (np.zeros((4, 16, 16), np.int64), None, "int64"),
    (np.zeros((4, 16, 16), np.uint8), np.arange(3), "length 4"),
    (np.zeros((4, 16, 16), np.uint8), np.arange(4.0), "float64"),
    (np.zeros((4, 16, 16), np.uint8), -np.arange(4), "negative"),
], ids=["channels", "ndim", "range", "nan", "dtype", "label-count", "label-type", "label-sign"])
def test_a_bad_array_is_a_data_error_naming_the_file(tmp_path, array, labels, says):
    np.save(tmp_path / "bad.npy", array)
    extra = {}
    if labels is not None:
        np.save(tmp_path / "bad_labels.npy", labels)
        extra = {"labels": tmp_path / "bad_labels.npy"}
    message = refused(load_images, array_cfg(tmp_path, tmp_path / "bad.npy", **extra))
    assert str(tmp_path / "bad.npy") in message and says in message
    if labels is not None:
        assert f"data.labels {tmp_path / 'bad_labels.npy'}" in message


def test_an_array_file_that_is_missing_or_not_numpys_is_named(tmp_path):
    assert f"data.root {tmp_path / 'none.npy'} does not exist" in refused(
        load_images, array_cfg(tmp_path, tmp_path / "none.npy"))
    (tmp_path / "text.npy").write_text("not an array")
    assert str(tmp_path / "text.npy") in refused(load_images, array_cfg(tmp_path, tmp_path / "text.npy"))
    np.savez(tmp_path / "two.npz", a=gray_faces(4), b=gray_faces(4))
    assert "images (or x)" in refused(load_images, array_cfg(tmp_path, tmp_path / "two.npz"))


def test_an_array_trains_end_to_end_and_vaegen_test_reads_it_again_from_data_root(tmp_path, capsys, tiny_config):
    np.savez(tmp_path / "faces.npz", images=gray_faces(), labels=np.arange(40) % 2)
    config = tiny_config(tmp_path, data={"root": str(tmp_path / "faces.npz"), "source": "array", "channels": 1},
                         train={"epochs": 1})
    assert main(["train", "--config", str(config)]) == 0
    best = tmp_path / "best" / "tiny"
    saved = yaml.safe_load((best / "config.yaml").read_text())["data"]
    assert saved["source"] == "array" and saved["root"] == str(tmp_path / "faces.npz")
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "faces.npz", tmp_path / "moved" / "faces.npz")
    assert main(["test", "--checkpoint", str(best), "--set", "backbone=none", "--set", "num_samples=8",
                 "--set", f"data_root={tmp_path / 'moved' / 'faces.npz'}"]) == 0
    assert json.loads((best / "test" / "metrics.json").read_text())["num_images"] == 8  # the val split: 4 a class


def test_a_bad_array_stops_the_cli_with_exit_2_and_one_paragraph(tmp_path, capsys, tiny_config):
    np.save(tmp_path / "bad.npy", np.full((8, 16, 16), 2.0, np.float32))
    config = tiny_config(tmp_path, data={"root": str(tmp_path / "bad.npy"), "source": "array"})
    assert main(["train", "--config", str(config)]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("error: ") and str(tmp_path / "bad.npy") in error and "Traceback" not in error


# ---------------------------------------------------------------------------------------
# data.source: torchvision


def test_mnist_in_torchvisions_format_loads_with_its_class_names_resized_to_the_image_size(tmp_path):
    written = fake_mnist(tmp_path / "tv")
    images = load_images(mnist_cfg(tmp_path, channels=3))
    assert images.images.shape == (30, 3, 32, 32) and images.labels.tolist() == written["train"][1].tolist()
    assert images.classes == torchvision.datasets.MNIST.classes[:3]  # the labels that occur: 0, 1, 2
    assert images.files[0] == "MNIST-train[0]"
    expected, _ = fit_image(Image.fromarray(written["train"][0][0]), mnist_cfg(tmp_path, channels=3))
    assert torch.equal(images.images[0], torch.from_numpy(np.array(expected)))

    test_part = load_images(mnist_cfg(tmp_path, split="test", image_size=28))
    assert torch.equal(test_part.images[:, 0], torch.from_numpy(written["t10k"][0]))


def test_a_torchvision_dataset_is_decoded_once(tmp_path, fitted):
    fake_mnist(tmp_path / "tv")
    cfg = mnist_cfg(tmp_path)
    first = load_images(cfg)
    assert len(fitted) == 30
    assert torch.equal(load_images(cfg).images, first.images) and len(fitted) == 30
    assert load_images(mnist_cfg(tmp_path, split="test")).fingerprint != first.fingerprint


def test_mnist_trains_end_to_end(tmp_path, tiny_config):
    fake_mnist(tmp_path / "tv", train=40)
    data_section = {"root": str(tmp_path / "tv"), "source": "torchvision", "dataset": "mnist", "download": False,
                    "channels": 1}
    config = tiny_config(tmp_path, data=data_section, train={"epochs": 1})
    assert main(["train", "--config", str(config)]) == 0
    saved = yaml.safe_load((tmp_path / "best" / "tiny" / "config.yaml").read_text())["data"]
    assert saved["dataset"] == "MNIST" and saved["split"] is None
    assert main(["train", "--resume", str(tmp_path / "logs" / "tiny"), "--set", "train.epochs=2"]) == 0


def test_missing_files_offline_name_each_file_and_the_folder_they_go_in(tmp_path):
    message = refused(load_images, mnist_cfg(tmp_path))
    assert str(tmp_path / "tv" / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES) and "data.download: true" in message
    fake_mnist(tmp_path / "tv")
    (tmp_path / "tv" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    message = refused(load_images, mnist_cfg(tmp_path))
    assert "missing MNIST/raw/t10k-labels-idx1-ubyte." in message


def test_missing_files_are_downloaded_into_data_root_then_read(tmp_path, monkeypatch):
    fetched = []

    def online(self):  # what torchvision's download leaves: the raw files under root/MNIST/raw
        fetched.append(self.root)
        fake_mnist(Path(self.root))

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", online)
    images = load_images(mnist_cfg(tmp_path, download=True))
    assert fetched == [str(tmp_path / "tv")] and len(images.images) == 30
    assert load_images(mnist_cfg(tmp_path, download=True)).fingerprint == images.fingerprint and len(fetched) == 1


def test_a_failed_download_is_said_beside_the_missing_files(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -2] Name or service "
                           "not known>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    message = refused(load_images, mnist_cfg(tmp_path, download=True))
    assert "Downloading them failed" in message and "Name or service not known" in message
    assert str(tmp_path / "tv" / "MNIST" / "raw") in message


def test_a_damaged_file_torchvision_cannot_read_is_a_data_error_naming_the_dataset_folder(tmp_path):
    fake_mnist(tmp_path / "tv")
    images = tmp_path / "tv" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])  # a partial download
    message = refused(load_images, mnist_cfg(tmp_path))
    assert f"from {tmp_path / 'tv' / 'MNIST'}" in message and "damaged or partly downloaded" in message


def test_missing_torchvision_files_stop_the_cli_with_exit_2_and_no_traceback(tmp_path, capsys, tiny_config):
    data_section = {"root": str(tmp_path / "tv"), "source": "torchvision", "dataset": "CIFAR10", "download": False}
    assert main(["train", "--config", str(tiny_config(tmp_path, data=data_section))]) == 2
    err = capsys.readouterr().err
    (error,) = err.strip().splitlines()
    assert error.startswith("error: data.root ") and str(tmp_path / "tv" / "cifar-10-batches-py") in error
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------
# data.limit


def test_limit_keeps_the_first_images_of_each_class_of_a_folder(tmp_path, fitted):
    cfg = DataConfig(root=SAMPLE, image_size=16, cache_dir=tmp_path / "cache", limit=5)
    images = load_images(cfg)
    assert len(fitted) == 15 and images.classes == SAMPLE_CLASSES
    expected = [f"{name}/{file.name}" for name in SAMPLE_CLASSES for file in sorted((SAMPLE / name).iterdir())[:5]]
    assert images.files == expected and images.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert load_images(cfg).files == expected and len(fitted) == 15  # the same again, from the cache
    whole = load_images(DataConfig(root=SAMPLE, image_size=16, cache_dir=tmp_path / "cache"))
    assert len(whole.files) == 300 and whole.fingerprint != images.fingerprint


def test_limit_applies_to_arrays_and_torchvision_datasets_alike(tmp_path):
    np.save(tmp_path / "faces.npy", gray_faces())
    np.save(tmp_path / "labels.npy", np.arange(40) % 4)
    cfg = array_cfg(tmp_path, tmp_path / "faces.npy", labels=tmp_path / "labels.npy", limit=3)
    assert load_images(cfg).files == [f"faces[{i}]" for i in range(12)]
    fake_mnist(tmp_path / "tv")
    limited = load_images(mnist_cfg(tmp_path, limit=2))
    assert limited.files == [f"MNIST-train[{i}]" for i in range(6)] and limited.labels.tolist() == [0, 1, 2] * 2


def _key_before_data_sources(index, cfg) -> str:
    """cache_key as vaegen had it before data.source and data.limit (git main, 678f06a): old caches must still match."""
    digest = hashlib.sha256()
    header = {"format": data.CACHE_FORMAT, "size": list(cfg.image_size), "channels": cfg.channels,
              "resize": cfg.resize, "classes": index.classes}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path, label in zip(index.files, index.labels):
        stat = path.stat()
        line = f"{path.relative_to(index.root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}\n"
        digest.update(line.encode())
    return digest.hexdigest()[:20]


@pytest.mark.parametrize("settings", [{}, {"image_size": 16, "channels": 1, "resize": "stretch"}])
def test_a_folder_read_whole_keeps_its_cache_key(settings):
    index = scan_folder(SAMPLE)
    cfg = DataConfig(root=SAMPLE, **settings)
    assert cache_key(index, cfg) == _key_before_data_sources(index, cfg)
    assert cache_key(index, cfg.model_copy(update={"limit": 100})) != cache_key(index, cfg)  # 100 a class: all of them


def test_a_folder_entry_records_its_source_as_before(tmp_path):
    load_images(DataConfig(root=SAMPLE, image_size=16, cache_dir=tmp_path / "cache"))
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    assert set(json.loads(data._metadata(entry)["source"])) == {"root", "host", "size", "channels", "resize"}


# ---------------------------------------------------------------------------------------
# the config


@pytest.mark.parametrize("section, names", [
    ({"root": "x", "dataset": "MNIST"}, "data.dataset is set, but data.source is folder"),
    ({"root": "x", "download": False}, "data.download is set"),
    ({"root": "x.npy", "source": "torchvision", "dataset": "MNIST", "labels": "y.npy"}, "data.labels is set"),
    ({"root": "x", "source": "torchvision"}, "needs data.dataset"),
    ({"root": "x", "source": "torchvision", "dataset": "MNIST", "split": "extra"}, "data.split extra is no split of MNIST"),
    ({"root": "x", "source": "array"}, "data.source array reads a .npy or .npz file"),
    ({"root": "x.npz", "source": "array", "labels": "y.npy"}, "data.labels goes with a .npy"),
    ({"root": "x.npy", "source": "array", "labels": "y.csv"}, "data.labels y.csv is not a .npy"),
    ({"root": "x", "source": "hdf5"}, "`data.source`"),
    ({"root": "x", "source": "torchvision", "dataset": "ImageNet"}, "`data.dataset`"),
    ({"root": "x", "limit": 0}, "`data.limit`"),
], ids=["dataset", "download", "labels", "no-dataset", "split", "suffix", "npz-labels", "labels-suffix", "source",
        "unknown-dataset", "limit"])
def test_a_key_that_does_not_fit_the_source_is_a_config_error_naming_it(section, names):
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"data": section})
    assert names in str(caught.value)


def test_each_source_survives_its_own_dumped_config():
    """A run's config.yaml holds every key with its default: reading it back must not find keys of other sources."""
    for section in ({"root": "x"}, {"root": "x", "source": "torchvision", "dataset": "cifar10", "split": "test"},
                    {"root": "x.npy", "source": "array", "labels": "y.npy", "limit": 5}):
        config = config_from_dict({"data": section})
        assert config_from_dict(yaml.safe_load(config.to_yaml())) == config
    assert config_from_dict({"data": {"root": "x", "source": "torchvision", "dataset": "fashionmnist"}}).data.title \
        == "FashionMNIST train"


def test_the_config_command_notes_an_array_file_that_is_not_there(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "none.npy"), "source": "array"}}))
    assert main(["config", "--config", str(config)]) == 0
    assert f"note: data.root {tmp_path / 'none.npy'} is no file here" in capsys.readouterr().err
    np.save(tmp_path / "none.npy", gray_faces(2))
    assert main(["config", "--config", str(config)]) == 0 and "note:" not in capsys.readouterr().err
