"""vaegen.apps.gallery, the logic behind `streamlit run ui.py`: finding runs safely, their metadata, and every picture."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import EXPORT_PROTOCOL, SAMPLE_CLASSES
from PIL import Image
from safetensors.torch import save_file

from vaegen.apps import gallery
from vaegen.config import TestConfig
from vaegen.data.dataset import decode_image
from vaegen.errors import CheckpointError, DataError
from vaegen.evaluation import report as evaluate
from vaegen.plots import BLOCK_COLUMNS, image_grid, labelled_rows, to_pil
from vaegen.samplers import draw as samplers
from vaegen.samplers.mixture import SAMPLER_FILE, fit_latent_gmm


@pytest.fixture(scope="module")
def models(tmp_path_factory, make_run):
    best = tmp_path_factory.mktemp("best")
    make_run(best, "plain")
    make_run(best, "cvae", conditional="onehot")
    return {name: gallery.load_model(best / name) for name in ["plain", "cvae"]}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(pixels(a.convert("RGB")), pixels(b.convert("RGB")))


def ink_rows(page: Image.Image, left: int, right: int) -> np.ndarray:
    """The rows of `page` with dark (text) pixels between columns left and right."""
    return np.flatnonzero((pixels(page.convert("L"))[:, left:right] < 128).any(axis=1))


# ---------------------------------------------------------------------------------------
# Where the runs are


def test_checkpoint_root_prefers_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VAEGEN_BEST_DIR", raising=False)
    assert gallery.checkpoint_root([], tmp_path / "default") == tmp_path / "default"
    monkeypatch.setenv("VAEGEN_BEST_DIR", str(tmp_path / "env"))
    assert gallery.checkpoint_root(["-q", "tests/test_ui.py"], tmp_path / "default") == tmp_path / "env"
    assert gallery.checkpoint_root(["--best-dir", str(tmp_path / "arg")], tmp_path / "default") == tmp_path / "arg"
    # a test runner's own options are not abbreviations of --best-dir
    assert gallery.checkpoint_root(["--best", "x"], tmp_path / "default") == tmp_path / "env"


def test_find_runs_lists_nested_runs_newest_first_and_broken_ones_last(tmp_path, make_run):
    best = tmp_path / "best"
    make_run(best, "older")
    make_run(best, "sweep/trial_1")  # a sweep's bests one level deeper
    make_run(best, "newest")
    make_run(best, ".hidden")
    make_run(best, "a/b/c/d/too_deep")
    (best / "empty").mkdir()
    for age, name in enumerate(["newest", "sweep/trial_1", "older"]):
        os.utime(best / name / "model.safetensors", ns=(2_000_000_000_000_000_000 - age * 10**9,) * 2)
    runs = gallery.find_runs(best)
    assert [run.name for run in runs] == ["newest", "sweep/trial_1", "older"]
    assert all(run.error is None and run.metadata["classes"] == SAMPLE_CLASSES for run in runs)
    assert gallery.find_runs(tmp_path / "missing") == []
    # the newest weights, but unreadable: listed after every run that can be opened, not first
    _truncate(make_run(best, "broken-newest"))
    _truncate(make_run(best, "broken-older"))
    os.utime(best / "broken-newest" / "model.safetensors", ns=(3_000_000_000_000_000_000,) * 2)
    os.utime(best / "broken-older" / "model.safetensors", ns=(1_000_000_000_000_000_000,) * 2)
    assert [run.name for run in gallery.find_runs(best)] == ["newest", "sweep/trial_1", "older", "broken-newest", "broken-older"]


@pytest.mark.parametrize("name", ["../../etc", "..", "/etc", "ok/../../outside", "../best-sibling/run"])
def test_open_run_refuses_names_outside_the_root(tmp_path, name, make_run):
    best = tmp_path / "best"
    make_run(best, "ok")
    make_run(tmp_path, "best-sibling/run")  # a real model beside the root must still be refused
    with pytest.raises(CheckpointError, match="outside the checkpoint root"):
        gallery.open_run(best, name)
    assert gallery.open_run(best, "ok") == (best / "ok").resolve()


def test_open_run_refuses_a_link_out_of_the_root_and_folders_without_weights(tmp_path, make_run):
    best = tmp_path / "best"
    make_run(tmp_path / "elsewhere", "secret")
    best.mkdir()
    (best / "link").symlink_to(tmp_path / "elsewhere" / "secret")
    (best / "notes").mkdir()
    with pytest.raises(CheckpointError, match="outside the checkpoint root"):
        gallery.open_run(best, "link")
    with pytest.raises(CheckpointError, match="no model named 'notes'"):
        gallery.open_run(best, "notes")
    assert gallery.find_runs(best) == []  # os.walk does not follow the link either


# ---------------------------------------------------------------------------------------
# Metadata


def test_describe_reads_weights_metadata_metrics_and_fid_protocol(tmp_path, make_run):
    make_run(tmp_path, "run", conditional="onehot", fid=45.678)
    run = gallery.read_run(tmp_path, "run")
    rows = gallery.describe(run)
    assert rows["dataset"].startswith("apples_sample (")
    assert rows["image size"] == "16×16 px (width×height), RGB"
    assert rows["classes"] == "3: Golden, Golden-Red, Red"
    assert rows["epoch"] == "5"
    assert rows["selected on"] == "val_nelbo = 123.5"
    assert "FID" not in rows  # efficientnet features: a Fréchet distance, not FID
    assert rows["Fréchet distance"] == (
        "fd_efficientnet_lite0 = 45.68 (efficientnet-lite0 features (1280-d), 500 generated vs 240 real train images "
        "at 16×16 px, prior sampler, T=1.0)"
    )
    assert rows["model"] == "conv_vae, latent 8, widths [8, 16], conditional onehot"
    assert rows["training"] == "mse loss, β constant 1, adam lr 0.0002, batch 32, 7 epochs, seed 3"
    assert gallery.summary(run) == "apples_sample · 16×16 px · 3 classes · epoch 5 · fd_efficientnet_lite0 45.68"


def test_describe_without_fid_says_it_was_not_measured(tmp_path, make_run):
    make_run(tmp_path, "run", channels=1)
    rows = gallery.describe(gallery.read_run(tmp_path, "run"))
    assert rows["Fréchet distance"] == "not measured (eval.backbone: none)" and "FID" not in rows
    assert rows["image size"] == "16×16 px (width×height), grayscale"


def test_only_inception_distances_are_called_fid(tmp_path, make_run):
    folder = make_run(tmp_path, "run", fid=45.678)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["metrics"] = {"fid_inception": 12.34}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    rows = gallery.describe(gallery.read_run(tmp_path, "run"))
    assert rows["FID"].startswith("fid_inception = 12.34 (") and "Fréchet distance" not in rows
    assert [gallery.distance_label(name) for name in ["fid_inception", "fd_dinov2", None]] == ["FID", "Fréchet distance", "Fréchet distance"]


def test_an_unconditional_model_does_not_offer_its_classes(tmp_path, make_run):
    make_run(tmp_path, "run")
    run = gallery.read_run(tmp_path, "run")
    assert gallery.describe(run)["classes"] == "3 in the training data (Golden, Golden-Red, Red); the model is unconditional"
    assert gallery.summary(run) == "apples_sample · 16×16 px · unconditional · epoch 5"


def test_every_size_reads_width_by_height_in_pixels(tmp_path, make_run):
    """data.image_size [16, 24] is 16 tall and 24 wide: the sidebar, the list, the FID protocol and the upload
    caption once said 16×24 or 24×16 depending on the caption; all say 24×16 px, the way photo tools do."""
    folder = make_run(tmp_path, "wide", fid=45.678, image_size=[16, 24])
    run = gallery.read_run(tmp_path, "wide")
    rows = gallery.describe(run)
    assert rows["image size"] == "24×16 px (width×height), RGB"
    assert "real train images at 24×16 px, prior sampler" in rows["Fréchet distance"]
    assert gallery.summary(run).startswith("apples_sample · 24×16 px · unconditional")
    model = gallery.load_model(folder)
    wide = _png(Image.new("RGB", (48, 32), "red"))  # PIL sizes are (width, height): the model's shape, twice over
    assert gallery.prepare_upload(wide, model).shape == (1, 3, 16, 24)
    assert gallery.upload_fit(wide, model) == "resized from 48×32 px to 24×16 px"
    assert gallery.upload_fit(_png(Image.new("RGB", (24, 16), "red")), model) == "24×16 px, as uploaded"
    assert gallery.upload_fit(_png(Image.new("RGB", (32, 48), "red")), model) == "center-cropped and resized from 32×48 px to 24×16 px"


def test_a_protocol_without_a_usable_image_size_still_reads():
    assert "images at ?, prior sampler" in gallery.protocol_text({**EXPORT_PROTOCOL, "image_size": [64]})
    assert "images at ?, prior sampler" in gallery.protocol_text({k: v for k, v in EXPORT_PROTOCOL.items() if k != "image_size"})


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])


def _foreign_weights(folder: Path) -> None:
    save_file({"weight": torch.zeros(3)}, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("damage, message", [
    (_truncate, "not a readable safetensors file"),
    (_foreign_weights, "not a vaegen model"),
    (lambda folder: (folder / "config.yaml").unlink(), "not a vaegen model folder"),
    (lambda folder: (folder / "config.yaml").write_text("model: {latnt_dim: 3}\n"), "did you mean `latent_dim`"),
    (lambda folder: (folder / "metrics.json").write_text("{not json"), "metrics.json is not readable JSON"),
    (lambda folder: (folder / "sweep.json").write_text("[1, 2]"), "sweep.json holds a JSON list"),
    # well-formed JSON of the wrong shape once raised on the page (AttributeError, ValueError) for every run
    (lambda folder: (folder / "metrics.json").write_text('{"epoch": 2, "metrics": [1, 2]}'), "`metrics` as a JSON list"),
    (lambda folder: (folder / "metrics.json").write_text('{"criterion": "fid", "value": "abc", "metrics": {"fd_x": "bad"}}'),
     "`metrics.fd_x` = 'bad', not a number; `value` = 'abc', not a number"),
    (lambda folder: (folder / "metrics.json").write_text('{"metrics": {"fd_x": 1.0}, "protocol": "x"}'), "`protocol` that is not an object"),
    (lambda folder: (folder / "sweep.json").write_text('{"params": [1, 2]}'), "`params` that is not an object"),
])
def test_broken_runs_are_listed_with_the_reason(tmp_path, damage, message, make_run):
    make_run(tmp_path, "good")
    damage(make_run(tmp_path, "broken"))
    runs = {run.name: run for run in gallery.find_runs(tmp_path)}
    assert runs["good"].error is None
    assert message in runs["broken"].error
    # the main page shows the error, once: the sidebar says only that the run cannot be opened
    assert gallery.describe(runs["broken"]) == {}
    assert gallery.summary(runs["broken"]) == "cannot be opened (select it to see why)"


def test_how_to_train_shows_the_quickstart_command(tmp_path):
    # that it is the README's command, promising the README's time, is checked in test_docs.py
    text = gallery.how_to_train(tmp_path)
    assert f"```bash\n{gallery.QUICKSTART}\n```" in text and text.startswith(f"No trained models under `{tmp_path}` yet.")


def test_how_to_train_says_when_the_root_does_not_exist(tmp_path):
    text = gallery.how_to_train(tmp_path / "bets_models")  # a typo must not read as "no models yet"
    assert text.startswith(f"`{tmp_path / 'bets_models'}` does not exist;") and "No trained models" not in text
    assert gallery.QUICKSTART in text
    (tmp_path / "file").write_text("")
    assert gallery.how_to_train(tmp_path / "file").startswith(f"`{tmp_path / 'file'}` is not a folder;")


# ---------------------------------------------------------------------------------------
# Pictures


def test_sample_view_is_a_grid_reproducible_by_seed(models):
    model = models["plain"]
    grid = gallery.sample_view(model, 6, seed=7, temperature=1.0).render()
    assert grid.size == (3 * 18 + 2, 2 * 18 + 2)  # 6 images of 16 px: 3 per row, 2 px padding
    assert np.array_equal(pixels(grid), pixels(gallery.sample_view(model, 6, seed=7, temperature=1.0).render()))
    assert not np.array_equal(pixels(grid), pixels(gallery.sample_view(model, 6, seed=8, temperature=1.0).render()))
    expected = to_pil(image_grid(model.sample(6, seed=7, temperature=0.5)))
    assert np.array_equal(pixels(gallery.sample_view(model, 6, seed=7, temperature=0.5).render()), pixels(expected))


def test_temperature_zero_decodes_the_mean_code_everywhere(models):
    grid = pixels(gallery.sample_view(models["plain"], 4, seed=1, temperature=0.0).render())
    tiles = [grid[2 + 18 * r : 18 + 18 * r, 2 + 18 * c : 18 + 18 * c] for r in range(2) for c in range(2)]
    assert all(np.array_equal(tile, tiles[0]) for tile in tiles)


def test_one_class_is_that_class_and_all_classes_are_labelled_rows(models):
    model = models["cvae"]
    assert gallery.class_choices(model) == [*SAMPLE_CLASSES, gallery.ALL_CLASSES]
    assert gallery.class_choices(models["plain"]) == []
    red = gallery.sample_view(model, 4, seed=2, temperature=1.0, choice="Red").render()
    assert np.array_equal(pixels(red), pixels(to_pil(image_grid(model.sample(4, labels=2, seed=2)))))

    page = gallery.sample_view(model, 4, seed=2, temperature=1.0, choice=gallery.ALL_CLASSES).render()
    margin = page.width - (4 * 18 + 2)
    assert margin > 0 and page.height == 3 * 18 + 2  # up to BLOCK_COLUMNS samples: one row per class, no gap
    body = pixels(page)[:, margin:]
    z = torch.randn(4, model.latent_dim, generator=torch.Generator().manual_seed(2))
    for k in range(3):  # row k: the same four codes decoded as class k
        expected = pixels(to_pil(image_grid(model.decode(z, torch.full((4,), k)), nrow=4)).convert("RGB"))
        assert np.array_equal(body[18 * k : 18 * k + 20], expected)
        assert len(ink_rows(page.crop((0, 18 * k + 2, margin, 18 * k + 18)), 0, margin)), f"row {k} has no label"
    with pytest.raises(ValueError, match="'Green' is not a class"):
        gallery.sample_view(model, 4, 0, 1.0, choice="Green")


def test_all_classes_wrap_each_class_into_a_labelled_block(models):
    """16 samples per class once made one 16-tile row per class (624x104 at 32 px), which the browser shrank to
    a strip of 30 px tiles; each class is now a block of BLOCK_COLUMNS columns, its name centred on it."""
    model = models["cvae"]
    assert BLOCK_COLUMNS == 8
    picture = gallery.sample_view(model, 16, seed=2, temperature=1.0, choice=gallery.ALL_CLASSES)
    assert picture.columns == BLOCK_COLUMNS and picture.names == tuple(SAMPLE_CLASSES)
    page = picture.render()
    block = 2 * 18 + 2  # two rows of 16 px tiles with their padding
    margin = page.width - (8 * 18 + 2)
    assert margin > 0
    gaps = page.height - (3 * block - 2 * 2)  # three blocks, sharing their padding as rows do, and two gaps
    gap = gaps // 2
    assert gap > 0 and gaps == 2 * gap
    step = block - 2 + gap
    z = torch.randn(16, model.latent_dim, generator=torch.Generator().manual_seed(2))
    for k in range(3):
        top = k * step
        expected = pixels(to_pil(image_grid(model.decode(z, torch.full((16,), k)), nrow=8)).convert("RGB"))
        assert np.array_equal(pixels(page)[top : top + block, margin:], expected)  # samples 9-16 on the second row
        ink = ink_rows(page.crop((0, top, margin, top + block)), 0, margin)
        assert abs((ink.min() + ink.max()) / 2 - block / 2) <= 2, f"class {k}'s name is not centred on its block"
        if k:  # a rule across the gap above the block, the names' margin included
            assert (pixels(page)[top - gap : top + 2, : margin // 2] < 250).any()
    assert len(gallery.sample_view(model, 64, 0, 1.0, gallery.ALL_CLASSES).images) == 3 * 64
    assert (gallery.max_samples(gallery.ALL_CLASSES), gallery.max_samples("Red"), gallery.max_samples(None)) == (64, 256, 256)


def test_vaegen_test_samples_png_wraps_the_same_way(models, tmp_path):
    model = models["cvae"]
    path, _ = evaluate._samples(model, TestConfig(grid=8, seed=2), tmp_path / "samples.png")  # 64 // 3: 16 per class
    expected = gallery.sample_view(model, 16, seed=2, temperature=1.0, choice=gallery.ALL_CLASSES).render(6)  # 16 px tiles at 96 px
    with Image.open(path) as written:
        assert same_pixels(written, expected) and written.height > 6 * 3 * 2 * 18  # blocks of two rows, labelled


def test_labels_are_drawn_after_scaling(models):
    """Nearest-neighbour enlargement of a 10 px label made blocky text; the names are drawn at the display scale."""
    picture = gallery.sample_view(models["cvae"], 4, seed=2, temperature=1.0, choice=gallery.ALL_CLASSES)
    small, big = picture.render(1), picture.render(6)
    small_margin, big_margin = small.width - (4 * 18 + 2), big.width - 6 * (4 * 18 + 2)
    assert big.height == 6 * small.height
    body = small.crop((small_margin, 0, small.width, small.height))
    assert np.array_equal(pixels(big.crop((big_margin, 0, big.width, big.height))),
                          pixels(body.resize((6 * body.width, 6 * body.height), Image.Resampling.NEAREST)))
    ink = ink_rows(big.crop((0, 0, big_margin, 6 * 18)), 0, big_margin)
    assert 8 <= ink.max() - ink.min() <= 24  # text of a readable size, not a 6x enlarged bitmap
    gray = np.asarray(big.convert("L"))[:6 * 18, :big_margin]
    assert ((gray > 40) & (gray < 215)).any()  # anti-aliased edges: drawn, not blown up
    assert big_margin < 6 * small_margin


def test_labelled_rows_keeps_a_path_on_one_row():
    images = torch.rand(3 * 12, 3, 16, 16)
    assert labelled_rows(images, ["a", "b", "c"]).height == 3 * 18 + 2  # no columns: one row per name
    wrapped = labelled_rows(images, ["a", "b", "c"], columns=BLOCK_COLUMNS)
    assert wrapped.height > 2 * 3 * 18


def test_screen_scale_follows_the_tile_size_within_limits():
    """The old factor, 512 // width, never enlarged anything wider than 256 px: an 8-step interpolation of a 32 px
    model (274 px wide) was shown at 32 px per tile, and a 64-sample grid smaller than a 16-sample one."""
    def picture(count: int, size: int, columns: int | None = None) -> gallery.Picture:
        return gallery.Picture(torch.rand(count, 3, size, size), columns)

    interpolation = picture(8, 32, columns=8)
    assert interpolation.render().width == 274
    assert interpolation.screen_scale() == 3 and interpolation.render(3).size == (3 * 274, 3 * 34 + 6)
    assert picture(64, 32).screen_scale() == picture(16, 32).screen_scale() == 3  # tiles of 96 px either way
    assert picture(16, 16).screen_scale() == 6 and picture(4, 128).screen_scale() == 1
    wide = picture(256, 32, columns=64)  # 2178 px at scale 1: not enlarged
    assert wide.screen_scale() == 1
    assert picture(256, 32).render(picture(256, 32).screen_scale()).width <= gallery.SCREEN_MAX_WIDTH
    tall = picture(960, 16, columns=8)  # 146 x 2162 px: 6x would be 21 Mpx
    scale = tall.screen_scale()
    width, height = tall.render().size
    assert 1 <= scale < 6 and width * height * scale**2 <= gallery.SCREEN_MAX_PIXELS
    big = interpolation.render(3)
    assert big.getpixel((6, 6)) == interpolation.render().getpixel((2, 2))  # whole pixels, no blur
    assert big.getpixel((5, 5)) == (255, 255, 255)


def test_sampler_wording(models):
    model = models["plain"]
    assert gallery.draws_from(model) == "the prior" and gallery.temperature_label(model) == "temperature (standard deviation of z)"
    with_mixture = types.SimpleNamespace(sampler=object())  # what vaegen.load attaches when the run has a mixture
    assert gallery.draws_from(with_mixture) == "the latent mixture"
    assert gallery.temperature_label(with_mixture) == "temperature (spread of the codes)"


def test_slerp_keeps_the_norm_where_lerp_shrinks_it():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    path = samplers.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b)
    assert torch.allclose(path[2], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.allclose(path.norm(dim=1), torch.ones(5))
    # two prior draws in 128 dims: slerp stays near √128 ≈ 11.3, the straight line's midpoint drops to about 8
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 128, generator=generator)
    z[1] *= z[0].norm() / z[1].norm()
    path = samplers.slerp(z[0], z[1], torch.linspace(0, 1, 9))
    assert torch.allclose(path.norm(dim=1), z[0].norm().expand(9), rtol=1e-5)
    assert torch.lerp(z[0], z[1], 0.5).norm() < 0.8 * z[0].norm()
    # parallel ends: no unique circle, a straight line
    line = samplers.slerp(a, 3 * a, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(line, torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))


def test_interpolation_between_random_latents(models):
    model = models["plain"]
    row = gallery.interpolation_view(model, steps=5, seed=4).render()
    assert row.size == (5 * 18 + 2, 18 + 2)
    assert np.array_equal(pixels(row), pixels(gallery.interpolation_view(model, steps=5, seed=4).render()))
    hotter = gallery.interpolation_view(model, steps=5, seed=4, temperature=1.5).render()
    assert not np.array_equal(pixels(row), pixels(hotter))
    ends = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(4))
    first_and_last = to_pil(image_grid(model.decode(ends), nrow=2))
    assert np.array_equal(pixels(row)[:, :18], pixels(first_and_last)[:, :18])  # step 0 is the first draw
    assert np.array_equal(pixels(row)[:, -18:], pixels(first_and_last)[:, -18:])  # the last step is the second


def test_random_interpolation_draws_its_ends_from_the_latent_mixture(tmp_path, make_run):
    """The ends once came from N(0, I) whatever the checkpoint shipped; they come from its mixture, per class."""
    folder = make_run(tmp_path, "cvae", conditional="onehot")
    codes = torch.randn(60, 8, generator=torch.Generator().manual_seed(0)) * 0.1 + 3.0
    fit_latent_gmm(codes, torch.arange(60) % 3, 3, 2, "full", seed=0).save(folder / SAMPLER_FILE, {})
    model = gallery.load_model(folder)
    assert model.latent_density is not None
    page = gallery.interpolation_view(model, steps=3, choice=gallery.ALL_CLASSES, seed=5, temperature=0.5)
    for k in range(3):
        ends = model.latent_density.sample(2, torch.Generator().manual_seed(5), torch.tensor(k), 0.5)
        path = model.decode(samplers.slerp(ends[0], ends[1], torch.linspace(0, 1, 3)), k)
        assert torch.allclose(page.images[3 * k : 3 * k + 3], path)
    red = gallery.interpolation_view(model, 3, "Red", seed=5, temperature=0.5).images
    assert torch.allclose(red, page.images[6:9])
    model.latent_density = None  # the prior's ends: another path
    assert not torch.allclose(gallery.interpolation_view(model, 3, "Red", seed=5, temperature=0.5).images, red)


def test_interpolation_between_images_shows_them_at_the_ends(models):
    model = models["cvae"]
    images = torch.stack([torch.full((3, 16, 16), 0.2), torch.full((3, 16, 16), 0.9)])
    page = gallery.interpolation_view(model, steps=4, choice=gallery.ALL_CLASSES, images=images).render()
    margin = page.width - (6 * 18 + 2)
    assert margin > 0 and page.height == 3 * 18 + 2  # a path is one row per class, never wrapped
    tile = pixels(page)[2:18, margin + 2 : margin + 18]
    assert (tile == round(0.2 * 255)).all()  # the first uploaded image opens each row
    tile = pixels(page)[2 + 36 : 18 + 36, -18:-2]
    assert (tile == round(0.9 * 255)).all()  # and the second closes it


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_uploads_are_converted_and_resized_like_training_data(models, tmp_path):
    model = models["plain"]
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 20, 20))  # the left half transparent: white, as in training
    (tmp_path / "a.png").write_bytes(_png(rgba))
    x = gallery.prepare_upload(_png(rgba), model)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    expected = torch.tensor(decode_image(tmp_path / "a.png", model.config.data)).float() / 255
    assert torch.equal(x[0], expected)
    # center_crop keeps the middle 20x20 of the 40x20 image: white on the left, red on the right
    assert torch.allclose(x[0, :, 8, 1], torch.ones(3)) and torch.allclose(x[0, :, 8, 14], torch.tensor([1.0, 0.0, 0.0]))

    gray = gallery.prepare_upload(_png(Image.new("L", (300, 300), 64)), model)
    assert gray.shape == (1, 3, 16, 16) and torch.allclose(gray, torch.full_like(gray, 64 / 255))
    cmyk = gallery.prepare_upload(_png(Image.new("CMYK", (33, 17), (0, 0, 0, 0)), "JPEG"), model)
    assert cmyk.shape == (1, 3, 16, 16) and cmyk.min() > 0.95
    with pytest.raises(DataError, match="not an image that can be read") as error:
        gallery.prepare_upload(b"GIF89a but not really", model)
    # PIL's message named the upload "<_io.BytesIO object at 0x7f...>"
    assert "0x" not in str(error.value) and "BytesIO" not in str(error.value)
    assert "cannot identify image file" in str(error.value) and "PNG, JPEG, WebP, BMP or TIFF" in str(error.value)


@pytest.mark.parametrize("size, resize, text", [
    ((2000, 100), "center_crop", "center-cropped and resized from 2000×100 px to 16×16 px"),
    ((2000, 100), "stretch", "stretched from 2000×100 px to 16×16 px"),
    ((64, 64), "center_crop", "resized from 64×64 px to 16×16 px"),
    ((16, 16), "stretch", "16×16 px, as uploaded"),
])
def test_upload_fit_says_how_the_upload_was_fitted(tmp_path, size, resize, text, make_run):
    model = gallery.load_model(make_run(tmp_path, "run", resize=resize))
    assert gallery.upload_fit(_png(Image.new("RGB", size, "red")), model) == text


def test_reconstruction_pairs_the_image_with_its_reconstruction(models):
    model = models["cvae"]
    x = gallery.prepare_upload(_png(Image.new("RGB", (16, 16), (200, 40, 40))), model)
    pair = gallery.reconstruction_view(model, x, choice="Golden").render()
    assert pair.size == (2 * 18 + 2, 18 + 2)
    expected = to_pil(image_grid(torch.cat([x, model.reconstruct(x, torch.tensor([0]))]), nrow=2))
    assert np.array_equal(pixels(pair), pixels(expected))
    every_class = gallery.reconstruction_view(model, x, choice=gallery.ALL_CLASSES).render()
    assert every_class.height == 3 * 18 + 2


def test_png_bytes():
    small = Image.new("RGB", (56, 38), (10, 20, 30))
    again = Image.open(io.BytesIO(gallery.png_bytes(small)))
    assert again.format == "PNG" and np.array_equal(np.asarray(again), np.asarray(small))


def test_metrics_json_is_optional(tmp_path, make_run):
    (make_run(tmp_path, "run") / "metrics.json").unlink()
    run = gallery.read_run(tmp_path, "run")
    assert run.error is None and gallery.describe(run)["epoch"] == "5"  # from the weights' metadata
    assert json.loads(json.dumps(gallery.describe(run)))  # plain strings, ready for the page


def test_a_sweep_winner_names_its_sweep_trial_and_parameters(tmp_path, make_run):
    folder = make_run(tmp_path, "apples-lr-best")
    sweep = {"sweep": "apples-lr", "trial": "trial_0003", "params": {"optim.lr": 0.001, "model.latent_dim": 64},
             "val_nelbo": 120.5, "epoch": 5}
    (folder / "sweep.json").write_text(json.dumps(sweep))
    run = gallery.read_run(tmp_path, "apples-lr-best")
    assert gallery.describe(run)["sweep"] == "best of apples-lr: trial trial_0003 (optim.lr 0.001, model.latent_dim 64)"
    assert gallery.summary(run).endswith(" · best of sweep apples-lr")
    assert "sweep" not in gallery.describe(dataclasses.replace(run, sweep={}))


def test_describe_names_the_sampler_generate_draws_from(tmp_path, make_run):
    folder = make_run(tmp_path, "run")
    assert gallery.describe(gallery.read_run(tmp_path, "run"))["sampler"] == "prior N(0, I)"
    codes = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    fit_latent_gmm(codes, None, 1, 10, "full", seed=0).save(folder / SAMPLER_FILE, {})
    rows = gallery.describe(gallery.read_run(tmp_path, "run"))
    assert rows["sampler"] == "gmm fitted on the training codes (10 components, full covariance)"


def test_download_names_say_what_drew_the_picture():
    # once "{run}-samples-seed{seed}.png" whatever the class, count or temperature
    assert gallery.download_name("apples", "samples", "Golden-Red", count=16, seed=0, T=0.8) == "apples-samples-Golden-Red-count16-seed0-T0.8.png"
    assert gallery.download_name("apples", "samples", None, count=4, seed=3, T=1.0) == "apples-samples-count4-seed3-T1.png"
    assert gallery.download_name("art", "reconstruction", "genre painting/oil") == "art-reconstruction-genre_painting_oil.png"
