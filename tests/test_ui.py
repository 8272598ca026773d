"""The gallery page (ui.py) driven through streamlit.testing's AppTest, against models the module trains.

Every picture the page shows or offers for download is read back (the media store is recorded)
and compared pixel for pixel with what vaegen.gallery draws for the same settings.
"""

from __future__ import annotations

import io
import os
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("streamlit", reason="the gallery needs streamlit: pip install -e '.[ui]'")
import streamlit as st  # noqa: E402
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import vaegen  # noqa: E402
from test_gallery import make_run  # noqa: E402
from test_train import tiny_config  # noqa: E402
from vaegen import gallery  # noqa: E402
from vaegen.checkpoint import read_model_metadata, save_model  # noqa: E402
from vaegen.cli import main  # noqa: E402
from vaegen.config import ModelConfig  # noqa: E402
from vaegen.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UI = str(REPO / "ui.py")


@pytest.fixture(scope="module")
def best(tmp_path_factory) -> Path:
    """best_models/ with two trained 16 px runs: `plain` (unconditional), then `cvae` (one-hot conditional)."""
    root = tmp_path_factory.mktemp("ui")
    for name, conditional in [("plain", "none"), ("cvae", "onehot")]:
        config = tiny_config(root / f"train-{name}", model={"conditional": conditional}, train={"epochs": 2},
                             output={"run_name": name, "best_dir": str(root / "best")})
        assert main(["train", "--config", str(config)]) == 0
    return root / "best"


@pytest.fixture
def media(monkeypatch) -> dict[str, tuple[bytes, str | None]]:
    """file id -> (bytes, download file name) of everything the page hands to Streamlit's media store."""
    stored: dict[str, tuple[bytes, str | None]] = {}
    real = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        file_id = real(self, path_or_data, mimetype, kind, filename)
        stored[file_id] = (path_or_data, filename)
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return stored


def app(root: Path, monkeypatch, run: str | None = None) -> AppTest:
    monkeypatch.setenv("VAEGEN_BEST_DIR", str(root))
    at = AppTest.from_file(UI, default_timeout=60).run()
    if run is not None:
        at.sidebar.radio(key="run").set_value(run).run()
    assert not at.exception, at.exception
    return at


def fetched(media, url: str) -> Image.Image:
    image = Image.open(io.BytesIO(media[Path(url).stem][0]))
    assert image.format == "PNG"  # shown and downloaded losslessly
    return image


def shown(at: AppTest, media, caption_start: str) -> Image.Image:
    """The one picture whose caption starts with `caption_start`, as the page displays it (enlarged)."""
    (url,) = [image.value[0] for image in at.image if image.captions[0].startswith(caption_start)]
    return fetched(media, url)


def downloaded(at: AppTest, media, key: str) -> Image.Image:
    return fetched(media, at.download_button(key=key).proto.url)


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def generate(at: AppTest, count: int, seed: int, temperature: float = 1.0) -> AppTest:
    at.number_input(key="count").set_value(count)
    at.number_input(key="seed").set_value(seed)
    at.slider(key="temperature").set_value(temperature)
    at.button(key="generate").click().run()
    assert not at.exception, at.exception
    return at


# ---------------------------------------------------------------------------------------


def test_server_is_local_and_headless_by_default():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["server"]["headless"] is True
    assert config["browser"]["gatherUsageStats"] is False


def test_sidebar_lists_every_run_with_its_metadata(best, monkeypatch):
    at = app(best, monkeypatch)
    radio = at.sidebar.radio(key="run")
    assert radio.options == ["cvae", "plain"]  # newest first
    assert radio.value == "cvae" and at.query_params["run"] == "cvae"
    assert list(radio.proto.captions) == [gallery.summary(gallery.read_run(best, name)) for name in radio.options]
    assert list(radio.proto.captions)[1].startswith("apples_sample · 16×16 · 3 classes · epoch 2")

    radio.set_value("plain").run()
    (text,) = [block.value for block in at.sidebar.markdown if "**dataset**" in block.value]
    assert "- **image size**: 16×16, RGB" in text
    assert "- **classes**: 3: Golden, Golden-Red, Red" in text
    assert "- **epoch**: 2" in text and "- **selected on**: val_nelbo = " in text
    assert "- **FID**: not measured" in text
    assert "- **model**: conv_vae, latent 8, widths [8, 16], conditional none" in text
    assert at.title[0].value == "plain" and at.query_params["run"] == "plain"
    assert not at.selectbox  # no class selector for an unconditional model


def test_sidebar_shows_fid_with_its_protocol(tmp_path, monkeypatch):
    make_run(tmp_path, "scored", fid=45.678)
    at = app(tmp_path, monkeypatch)
    (text,) = [block.value for block in at.sidebar.markdown if "**dataset**" in block.value]
    assert "- **FID**: fd_efficientnet_lite0 = 45.68 (efficientnet-lite0 features (1280-d), 500 generated" in text


def test_generate_same_seed_same_image_and_download_png(best, monkeypatch, media):
    at = app(best, monkeypatch, run="plain")
    assert not at.image or all(not image.captions[0].endswith("temperature 1") for image in at.image)
    generate(at, count=6, seed=7)
    model = vaegen.load(best / "plain")
    expected = gallery.sample_view(model, 6, 7, 1.0)
    assert expected.size == (3 * 18 + 2, 2 * 18 + 2)
    assert same(downloaded(at, media, "download_samples"), expected)  # the download is the grid at model resolution
    assert media[Path(at.download_button(key="download_samples").proto.url).stem][1] == "plain-samples-seed7.png"
    first = shown(at, media, "6 samples, seed 7")
    assert same(first, gallery.enlarge(expected)) and first.width == 9 * expected.width  # enlarged to fit 512 px

    generate(at, count=6, seed=7)
    assert same(shown(at, media, "6 samples, seed 7"), first)
    generate(at, count=6, seed=8)
    assert not same(shown(at, media, "6 samples, seed 8"), first)
    generate(at, count=6, seed=8, temperature=0.0)  # every sample decodes z = 0
    assert same(downloaded(at, media, "download_samples"), gallery.sample_view(model, 6, 0, 0.0))

    at.download_button(key="download_samples").click().run()  # downloading keeps the grid on the page
    assert not at.exception
    assert same(shown(at, media, "6 samples, seed 8, temperature 0"), gallery.enlarge(gallery.sample_view(model, 6, 8, 0.0)))


def test_class_selector_one_class_and_all_classes(best, monkeypatch, media):
    at = app(best, monkeypatch, run="cvae")
    selector = at.selectbox(key="class")
    assert selector.options == ["Golden", "Golden-Red", "Red", "all classes"]
    model = vaegen.load(best / "cvae")

    selector.set_value("Red").run()
    generate(at, count=4, seed=3)
    assert same(downloaded(at, media, "download_samples"), gallery.sample_view(model, 4, 3, 1.0, "Red"))
    assert not same(downloaded(at, media, "download_samples"), gallery.sample_view(model, 4, 3, 1.0, "Golden"))

    at.selectbox(key="class").set_value("all classes").run()
    assert at.number_input(key="count").label == "samples per class row"
    generate(at, count=4, seed=3)
    page = downloaded(at, media, "download_samples")
    assert same(page, gallery.sample_view(model, 4, 3, 1.0, gallery.ALL_CLASSES))
    assert page.height == 3 * 18 + 2 and page.width > 4 * 18 + 2  # three rows, names in a left margin
    assert shown(at, media, "all classes, 4 samples, seed 3")


def test_interpolation_between_random_latents_and_uploaded_images(best, monkeypatch, media):
    at = app(best, monkeypatch, run="plain")
    model = vaegen.load(best / "plain")
    at.slider(key="steps").set_value(5)
    at.number_input(key="interp_seed").set_value(3).run()
    row = downloaded(at, media, "download_interpolation")
    assert same(row, gallery.interpolation_view(model, 5, seed=3)) and row.size == (5 * 18 + 2, 20)
    at.number_input(key="interp_seed").set_value(4).run()
    assert not same(downloaded(at, media, "download_interpolation"), row)

    at.radio(key="between").set_value("two uploaded images").run()
    assert "download_interpolation" not in [button.key for button in at.download_button]  # waits for two images
    first = png(Image.new("RGB", (64, 48), (220, 30, 30)))
    second = png(Image.new("L", (20, 20), 200))
    at.file_uploader(key="interp_first").upload("red.png", first, "image/png")
    at.file_uploader(key="interp_second").upload("gray.png", second, "image/png").run()
    assert not at.exception, at.exception
    expected = gallery.interpolation_view(
        model, 5, images=torch.cat([gallery.prepare_upload(first, model), gallery.prepare_upload(second, model)])
    )
    row = downloaded(at, media, "download_interpolation")
    assert same(row, expected) and row.size == (7 * 18 + 2, 20)  # the two images at the ends, 5 steps between
    assert np.asarray(row)[9, 9].tolist() == [220, 30, 30]  # the first tile is the uploaded red image
    assert shown(at, media, "red.png → gray.png")


def test_reconstruction_of_an_upload_of_any_size_and_mode(best, monkeypatch, media):
    at = app(best, monkeypatch, run="cvae")
    model = vaegen.load(best / "cvae")
    at.selectbox(key="class").set_value("Golden").run()
    photo = Image.new("RGBA", (50, 30), (255, 200, 0, 255)).quantize(8)  # a palette image, 50x30
    data = png(photo)
    at.file_uploader(key="recon_upload").upload("apple.png", data, "image/png").run()
    assert not at.exception, at.exception
    pair = downloaded(at, media, "download_reconstruction")
    assert same(pair, gallery.reconstruction_view(model, gallery.prepare_upload(data, model), "Golden"))
    assert pair.size == (2 * 18 + 2, 20)
    assert shown(at, media, "apple.png as the model sees it (16×16)")

    at.selectbox(key="class").set_value("all classes").run()
    assert downloaded(at, media, "download_reconstruction").height == 3 * 18 + 2  # one pair per class

    at.file_uploader(key="recon_upload").set_value(("notes.png", b"not an image at all", "image/png")).run()
    assert not at.exception
    assert any("not an image that can be read" in error.value for error in at.error)
    assert at.button(key="generate")  # the rest of the page still works


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_empty_root_shows_how_to_train_one(tmp_path, monkeypatch, folder):
    if folder == "empty":
        (tmp_path / folder).mkdir()
    at = app(tmp_path / folder, monkeypatch)
    (info,) = at.info
    assert "bash scripts/quickstart.sh" in info.value and str(tmp_path / folder) in info.value
    assert not at.sidebar.radio and not at.error


def _broken_root(best: Path, root: Path) -> Path:
    shutil.copytree(best / "plain", root / "plain")
    shutil.copytree(best / "plain", root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:80])
    shutil.copytree(best / "plain", root / "other-model")
    # readable, vaegen metadata, but tensors of a different architecture: fails only when loaded
    other = build_model(ModelConfig(latent_dim=4, widths=(8, 16)), (16, 16), 3, 3)
    save_model(root / "other-model" / "model.safetensors", other, read_model_metadata(best / "plain" / "model.safetensors"))
    shutil.copytree(best / "plain", root / "foreign")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(root / "foreign" / "model.safetensors"), metadata={"format": "pt"})
    return root


@pytest.mark.parametrize("name, message", [
    ("truncated", "not a readable safetensors file"),
    ("other-model", "saved by a different model than the config describes"),
    ("foreign", "safetensors file but not a vaegen model"),
])
def test_broken_or_foreign_checkpoint_shows_an_error_and_the_rest_works(best, tmp_path, monkeypatch, media, name, message):
    root = _broken_root(best, tmp_path)
    at = app(root, monkeypatch, run=name)
    assert any(message in error.value for error in at.error), [error.value for error in at.error]
    assert sorted(at.sidebar.radio(key="run").options) == ["foreign", "other-model", "plain", "truncated"]
    assert not at.button  # nothing to generate with

    at.sidebar.radio(key="run").set_value("plain").run()
    assert not at.exception and not at.error
    generate(at, count=4, seed=0)
    assert same(downloaded(at, media, "download_samples"), gallery.sample_view(vaegen.load(root / "plain"), 4, 0, 1.0))


@pytest.mark.parametrize("crafted", ["../../etc", "/etc", "../ui"])
def test_a_crafted_run_name_is_refused(best, monkeypatch, crafted):
    monkeypatch.setenv("VAEGEN_BEST_DIR", str(best))
    at = AppTest.from_file(UI, default_timeout=60)
    at.query_params["run"] = crafted
    at.run()
    assert not at.exception
    assert any("outside the checkpoint root" in error.value for error in at.error)
    assert at.sidebar.radio(key="run").value == "cvae"  # the page falls back to the list
    assert at.query_params["run"] == "cvae"


def test_a_link_to_a_run_opens_it(best, monkeypatch):
    monkeypatch.setenv("VAEGEN_BEST_DIR", str(best))
    at = AppTest.from_file(UI, default_timeout=60)
    at.query_params["run"] = "plain"
    at.run()
    assert at.sidebar.radio(key="run").value == "plain" and not at.error


def test_model_is_loaded_once_per_weights_file_version(best, tmp_path, monkeypatch):
    shutil.copytree(best / "plain", tmp_path / "plain")
    loads = []
    real = gallery.load_model
    monkeypatch.setattr(gallery, "load_model", lambda path: loads.append(path) or real(path))
    st.cache_resource.clear()
    at = app(tmp_path, monkeypatch)
    generate(at, count=4, seed=1)
    generate(at, count=4, seed=2)
    at.slider(key="steps").set_value(4).run()
    assert loads == [tmp_path / "plain"]
    weights = tmp_path / "plain" / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # training rewrote the best model
    at.run()
    assert loads == [tmp_path / "plain"] * 2
