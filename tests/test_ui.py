"""The gallery page (ui.py) driven through streamlit.testing's AppTest, against models the module trains.

Every picture the page shows or offers for download is read back (the media store is recorded)
and compared pixel for pixel with what vaegen.apps.gallery draws for the same settings.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image

pytest.importorskip("streamlit", reason="the gallery needs streamlit: pip install -e '.[ui]'")
import streamlit as st  # noqa: E402
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import vaegen  # noqa: E402
from vaegen.apps import gallery  # noqa: E402
from vaegen.apps.cli import main  # noqa: E402
from vaegen.checkpoint import read_model_metadata, save_model  # noqa: E402
from vaegen.config import ModelConfig  # noqa: E402
from vaegen.models import build_model  # noqa: E402
from vaegen.samplers.mixture import SAMPLER_FILE, fit_latent_gmm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UI = str(REPO / "ui.py")


@pytest.fixture(scope="module")
def best(tmp_path_factory, tiny_config) -> Path:
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
    (url,) = [image.value[0] for image in at.image if image.proto.imgs[0].alt.startswith(caption_start)]
    assert any(caption.value.startswith(caption_start) for caption in at.caption)  # the caption under it
    return fetched(media, url)


def on_screen(picture: gallery.Picture) -> Image.Image:
    return picture.render(picture.screen_scale())


def downloaded(at: AppTest, media, key: str) -> Image.Image:
    return fetched(media, at.download_button(key=key).proto.url)


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def sidebar_text(at: AppTest) -> str:
    return "\n".join(block.value for block in at.sidebar.markdown)


def with_mixture(best: Path, root: Path) -> Path:
    """A copy of the `cvae` run that ships a latent mixture (vaegen.load attaches it; Generate draws from it)."""
    shutil.copytree(best / "cvae", root / "cvae-gmm")
    codes = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    fit_latent_gmm(codes, torch.arange(60) % 3, 3, 2, "full", seed=0).save(root / "cvae-gmm" / SAMPLER_FILE, {})
    return root / "cvae-gmm"


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
    assert list(radio.proto.captions)[0].startswith("apples_sample · 16×16 px · 3 classes · epoch 2")
    assert list(radio.proto.captions)[1].startswith("apples_sample · 16×16 px · unconditional · epoch 2")

    radio.set_value("plain").run()
    (text,) = [block.value for block in at.sidebar.markdown if "**dataset**" in block.value]
    assert "- **image size**: 16×16 px (width×height), RGB" in text
    assert "- **classes**: 3 in the training data (Golden, Golden-Red, Red); the model is unconditional" in text
    assert "- **epoch**: 2" in text and "- **selected on**: val_nelbo = " in text
    assert "- **Fréchet distance**: not measured" in text and "FID" not in text
    assert "- **model**: conv_vae, latent 8, widths [8, 16], conditional none" in text
    assert at.title[0].value == "plain" and at.query_params["run"] == "plain"
    assert not at.selectbox  # no class selector for an unconditional model


def test_sidebar_shows_fid_with_its_protocol(tmp_path, monkeypatch, make_run):
    make_run(tmp_path, "scored", fid=45.678)
    at = app(tmp_path, monkeypatch)
    (text,) = [block.value for block in at.sidebar.markdown if "**dataset**" in block.value]
    # efficientnet features: training says these are not FID values, and so does the page
    assert "- **Fréchet distance**: fd_efficientnet_lite0 = 45.68 (efficientnet-lite0 features (1280-d), 500 generated" in text
    assert "FID" not in text


def test_generate_same_seed_same_image_and_download_png(best, monkeypatch, media):
    at = app(best, monkeypatch, run="plain")
    assert not [caption for caption in at.caption if caption.value.endswith("temperature 1")]
    assert "Press Generate to draw samples from the prior." in [caption.value for caption in at.caption]
    assert at.slider(key="temperature").label == "temperature (standard deviation of z)"
    generate(at, count=6, seed=7)
    model = vaegen.load(best / "plain")
    expected = gallery.sample_view(model, 6, 7, 1.0).render()
    assert expected.size == (3 * 18 + 2, 2 * 18 + 2)
    assert same(downloaded(at, media, "download_samples"), expected)  # the download is the grid at model resolution
    assert media[Path(at.download_button(key="download_samples").proto.url).stem][1] == "plain-samples-count6-seed7-T1.png"
    first = shown(at, media, "6 samples, seed 7")
    assert same(first, on_screen(gallery.sample_view(model, 6, 7, 1.0)))
    assert first.width == 6 * expected.width  # 16 px tiles shown about 96 px tall

    generate(at, count=6, seed=7)
    assert same(shown(at, media, "6 samples, seed 7"), first)
    generate(at, count=6, seed=8)
    assert not same(shown(at, media, "6 samples, seed 8"), first)
    generate(at, count=6, seed=8, temperature=0.0)  # every sample decodes z = 0
    assert same(downloaded(at, media, "download_samples"), gallery.sample_view(model, 6, 0, 0.0).render())

    at.download_button(key="download_samples").click().run()  # downloading keeps the grid on the page
    assert not at.exception
    assert same(shown(at, media, "6 samples, seed 8, temperature 0"), on_screen(gallery.sample_view(model, 6, 8, 0.0)))
    generate(at, count=1, seed=8)
    assert shown(at, media, "1 sample, seed 8, temperature 1")


def test_class_selector_one_class_and_all_classes(best, monkeypatch, media):
    at = app(best, monkeypatch, run="cvae")
    selector = at.selectbox(key="class")
    assert selector.options == ["Golden", "Golden-Red", "Red", "all classes"]
    model = vaegen.load(best / "cvae")

    selector.set_value("Red").run()
    assert at.number_input(key="count").proto.max == 256
    generate(at, count=4, seed=3)
    assert same(downloaded(at, media, "download_samples"), gallery.sample_view(model, 4, 3, 1.0, "Red").render())
    assert not same(downloaded(at, media, "download_samples"), gallery.sample_view(model, 4, 3, 1.0, "Golden").render())

    at.selectbox(key="class").set_value("all classes").run()
    count = at.number_input(key="count")
    assert count.label == "samples per class" and count.proto.max == 64
    generate(at, count=16, seed=3)
    page = downloaded(at, media, "download_samples")
    assert same(page, gallery.sample_view(model, 16, 3, 1.0, gallery.ALL_CLASSES).render())
    # each class a labelled block of 8 columns and 2 rows (once one 16-tile row), names in a left margin
    assert page.height > 3 * (2 * 18) and 8 * 18 + 2 < page.width < 16 * 18 + 2
    screen = shown(at, media, "all classes, 16 samples per class, seed 3")
    assert screen.height == 6 * page.height  # 16 px tiles shown 96 px tall

    at.selectbox(key="class").set_value("Red").run()
    generate(at, count=256, seed=3)
    at.selectbox(key="class").set_value("all classes").run()  # 256 asked for one class: all classes draw 64 each
    assert shown(at, media, "all classes, 64 samples per class, seed 3")


def test_interpolation_between_random_latents_and_uploaded_images(best, monkeypatch, media):
    at = app(best, monkeypatch, run="plain")
    model = vaegen.load(best / "plain")
    at.slider(key="steps").set_value(5)
    at.number_input(key="interp_seed").set_value(3).run()
    row = downloaded(at, media, "download_interpolation")
    assert same(row, gallery.interpolation_view(model, 5, seed=3).render()) and row.size == (5 * 18 + 2, 20)
    assert shown(at, media, "5 steps between two draws from the prior (seed 3, temperature 1)").width == 6 * row.width
    at.number_input(key="interp_seed").set_value(4).run()
    assert not same(downloaded(at, media, "download_interpolation"), row)
    assert at.slider(key="interp_temperature").value == 1.0
    at.slider(key="interp_temperature").set_value(0.5).run()
    assert same(downloaded(at, media, "download_interpolation"), gallery.interpolation_view(model, 5, seed=4, temperature=0.5).render())

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
    assert same(row, expected.render()) and row.size == (7 * 18 + 2, 20)  # the two images at the ends, 5 steps between
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
    assert same(pair, gallery.reconstruction_view(model, gallery.prepare_upload(data, model), "Golden").render())
    assert pair.size == (2 * 18 + 2, 20)
    assert shown(at, media, "apple.png as the model sees it (center-cropped and resized from 50×30 px to 16×16 px), and its reconstruction")

    at.selectbox(key="class").set_value("all classes").run()
    assert downloaded(at, media, "download_reconstruction").height == 3 * 18 + 2  # one pair per class
    assert shown(at, media, "apple.png as the model sees it (center-cropped and resized from 50×30 px to 16×16 px), and its reconstruction under each class")
    assert media[Path(at.download_button(key="download_reconstruction").proto.url).stem][1] == "cvae-reconstruction-all_classes.png"

    at.file_uploader(key="recon_upload").set_value(("notes.png", b"not an image at all", "image/png")).run()
    assert not at.exception
    (error,) = [error.value for error in at.error]
    assert "not an image that can be read" in error and "upload a PNG, JPEG" in error
    assert "0x" not in error and "BytesIO" not in error  # no Python object reprs
    assert at.button(key="generate")  # the rest of the page still works


def test_a_wide_upload_says_it_was_cropped(best, monkeypatch, media):
    at = app(best, monkeypatch, run="plain")
    at.file_uploader(key="recon_upload").upload("strip.png", png(Image.new("RGB", (2000, 100), "red")), "image/png").run()
    assert not at.exception, at.exception
    assert shown(at, media, "strip.png as the model sees it (center-cropped and resized from 2000×100 px to 16×16 px)")


def test_the_latent_space_tab_shows_what_vaegen_test_draws(best, monkeypatch, media):
    at = app(best, monkeypatch, run="cvae")
    assert "download_traversals.png" not in [button.key for button in at.download_button]  # drawn only when asked
    at.button(key="latents").click().run()
    assert not at.exception, at.exception
    expected = gallery.latent_view(vaegen.load(best / "cvae"))
    assert [name for name, _, _ in expected] == ["kl_per_dim.png", "traversals.png", "latent_map.png"]
    for name, caption, png_data in expected:
        assert same(shown(at, media, caption), Image.open(io.BytesIO(png_data)))
        assert downloaded(at, media, f"download_{name}").size == Image.open(io.BytesIO(png_data)).size
    assert "60 validation images" in expected[0][1]


def test_empty_root_shows_how_to_train_one(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    at = app(tmp_path / "empty", monkeypatch)
    (info,) = at.info
    assert "bash scripts/quickstart.sh" in info.value and f"No trained models under `{tmp_path / 'empty'}` yet" in info.value
    assert not at.sidebar.radio and not at.error and not at.warning


def test_a_missing_root_says_it_does_not_exist(tmp_path, monkeypatch):
    at = app(tmp_path / "bets_models", monkeypatch)  # a typo once read as "no trained models yet"
    (warning,) = at.warning
    assert warning.value.startswith(f"`{tmp_path / 'bets_models'}` does not exist;") and "No trained models" not in warning.value
    assert "bash scripts/quickstart.sh" in warning.value  # a fresh clone has no best_models/ yet
    assert not at.sidebar.radio and not at.info


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
    # the error once, on the main page: not again in the sidebar's caption or metadata
    assert not any(message in block.value for block in at.sidebar.markdown)
    radio = at.sidebar.radio(key="run")
    caption = list(radio.proto.captions)[radio.options.index(name)]
    assert caption == ("cannot be opened (select it to see why)" if name != "other-model" else gallery.summary(gallery.read_run(root, name)))

    at.sidebar.radio(key="run").set_value("plain").run()
    assert not at.exception and not at.error
    generate(at, count=4, seed=0)
    assert same(downloaded(at, media, "download_samples"), gallery.sample_view(vaegen.load(root / "plain"), 4, 0, 1.0).render())


def test_the_page_opens_the_newest_working_model(best, tmp_path, monkeypatch):
    """Broken checkpoints, however new, once became the model the page opened."""
    root = _broken_root(best, tmp_path)
    for age, name in enumerate(["truncated", "foreign", "plain"]):  # broken ones newer than the working one
        os.utime(root / name / "model.safetensors", ns=(2_000_000_000_000_000_000 - age * 10**9,) * 2)
    os.utime(root / "other-model" / "model.safetensors", ns=(1_000_000_000_000_000_000,) * 2)
    at = app(root, monkeypatch)
    radio = at.sidebar.radio(key="run")
    assert radio.options == ["plain", "other-model", "truncated", "foreign"]  # the ones that open first, newest first
    assert radio.value == "plain" and not at.error and at.button(key="generate")

    monkeypatch.setenv("VAEGEN_BEST_DIR", str(root))
    at = AppTest.from_file(UI, default_timeout=60)
    at.query_params["run"] = "no-such-run"
    at.run()
    assert at.sidebar.radio(key="run").value == "plain"
    (error,) = [error.value for error in at.error]  # the refusal, and no broken model's error under it
    assert "no model named 'no-such-run'" in error


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
    monkeypatch.setattr(gallery, "load_model", lambda path, *sampling: loads.append(path) or real(path, *sampling))
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


def test_a_generate_request_belongs_to_its_model(best, monkeypatch, media):
    """256 samples drawn on one model were once drawn at once on any model picked next, unasked."""
    at = app(best, monkeypatch, run="plain")
    generate(at, count=9, seed=1)
    assert shown(at, media, "9 samples, seed 1")
    at.sidebar.radio(key="run").set_value("cvae").run()
    assert not [caption for caption in at.caption if "samples, seed" in caption.value]
    assert "Press Generate to draw samples from the prior." in [caption.value for caption in at.caption]
    at.sidebar.radio(key="run").set_value("plain").run()  # back to the model it was made for
    assert shown(at, media, "9 samples, seed 1")


def test_pictures_are_drawn_once_per_model_and_settings(best, monkeypatch, media):
    """Every click reruns the whole page, every tab included; the pictures come from a cache."""
    calls = {"sample_view": 0, "interpolation_view": 0, "reconstruction_view": 0}

    def counting(name, real):
        def view(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return view

    for name in calls:
        monkeypatch.setattr(gallery, name, counting(name, getattr(gallery, name)))
    st.cache_data.clear()
    at = app(best, monkeypatch)
    generate(at, count=64, seed=1)
    at.file_uploader(key="recon_upload").upload("red.png", png(Image.new("RGB", (20, 20), "red")), "image/png").run()
    assert calls == {"sample_view": 1, "interpolation_view": 1, "reconstruction_view": 1}
    at.number_input(key="interp_seed").set_value(5).run()  # only the interpolation changed
    at.download_button(key="download_samples").click().run()
    at.run()
    assert calls == {"sample_view": 1, "interpolation_view": 2, "reconstruction_view": 1}
    at.number_input(key="interp_seed").set_value(0).run()  # drawn before: from the cache
    assert calls["interpolation_view"] == 2
    assert shown(at, media, "Golden, 64 samples, seed 1")


def test_a_model_with_a_latent_mixture_says_so(best, tmp_path, monkeypatch, media):
    with_mixture(best, tmp_path)
    at = app(tmp_path, monkeypatch)
    assert "Press Generate to draw samples from the latent mixture." in [caption.value for caption in at.caption]
    assert at.slider(key="temperature").label == "temperature (spread of the codes)"
    assert at.slider(key="interp_temperature").label == "temperature (spread of the codes)"
    at.selectbox(key="class").set_value("all classes").run()
    at.slider(key="steps").set_value(3)
    at.slider(key="interp_temperature").set_value(0.5).run()
    model = vaegen.load(tmp_path / "cvae-gmm")
    assert model.latent_density is not None
    expected = gallery.interpolation_view(model, 3, gallery.ALL_CLASSES, seed=0, temperature=0.5)
    assert same(downloaded(at, media, "download_interpolation"), expected.render())
    assert shown(at, media, "3 steps between two draws from the latent mixture (seed 0, temperature 0.5)")


def test_compare_models_shows_what_vaegen_compare_draws(best, monkeypatch, media):
    at = app(best, monkeypatch)
    at.sidebar.toggle(key="compare").set_value(True).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Compare models" and not at.sidebar.radio  # the model list gives way to the choice
    assert at.sidebar.multiselect(key="compare_runs").value == ["cvae", "plain"]  # the first two, newest first
    view = gallery.compare_view(best, ["cvae", "plain"])
    (table,) = at.dataframe
    assert list(table.value.columns) == view.header and table.value.values.tolist() == view.rows
    assert [note.value for note in at.caption if note.value in view.notes] == view.notes  # eval off: said, not flagged
    for caption, png in view.pictures:
        assert same(shown(at, media, caption), Image.open(io.BytesIO(png)))
    at.sidebar.multiselect(key="compare_runs").set_value(["plain"]).run()
    assert "Pick two models or more" in at.info[0].value and not at.dataframe
