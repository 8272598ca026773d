"""End-to-end training through the CLI: files written, exact resume, NaN stop, grayscale, W&B offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import RESUME_SEED, SAMPLE, checkpoint_weights, metric_rows
from PIL import Image
from safetensors.torch import load_file

import vaegen
import vaegen.training.loop
from vaegen.apps.cli import main
from vaegen.checkpoint import load_training_state
from vaegen.models.vae import VAE

REPO = Path(__file__).resolve().parents[1]


def test_train_writes_every_file(tmp_path, capsys, tiny_config):
    assert main(["train", "--config", str(tiny_config(tmp_path))]) == 0
    run, best = tmp_path / "logs" / "tiny", tmp_path / "best" / "tiny"
    for name in ["config.yaml", "metrics.jsonl", "curves.png", "train.log", "checkpoints/last.pt",
                 "checkpoints/config.yaml", "samples_epoch0002.png", "recon_epoch0002.png",
                 "samples_epoch0003.png", "recon_epoch0003.png"]:
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for name in ["model.safetensors", "config.yaml", "metrics.json", "samples.png"]:
        assert (best / name).is_file(), name

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [row["beta"] for row in rows] == [0.5, 1.0, 1.0]
    for key in ["train_loss", "train_recon", "train_kl", "train_nelbo", "val_loss", "val_recon", "val_kl", "val_nelbo", "val_mse", "lr", "images_per_s"]:
        assert all(row[key] == row[key] and row[key] >= 0 for row in rows), key
    assert rows[0]["train_loss"] == pytest.approx(rows[0]["train_recon"] + 0.5 * rows[0]["train_kl"], rel=1e-5)

    metrics = json.loads((best / "metrics.json").read_text())
    assert all(row["val_nelbo"] == pytest.approx(row["val_recon"] + row["val_kl"]) for row in rows)
    # selection ignores β: the default criterion is recon + KL, not the β-weighted objective
    best_row = min(rows, key=lambda row: row["val_nelbo"])
    assert metrics["criterion"] == "val_nelbo"
    assert metrics["epoch"] == best_row["epoch"]
    assert metrics["value"] == pytest.approx(best_row["val_nelbo"])
    assert metrics["classes"] == ["Golden", "Golden-Red", "Red"]

    # the effective config, defaults filled in, beside the run and the best model
    saved = yaml.safe_load((best / "config.yaml").read_text())
    assert saved["model"]["latent_dim"] == 8 and saved["loss"]["recon"] == "mse"
    assert (run / "config.yaml").read_text() == (best / "config.yaml").read_text()

    out = capsys.readouterr().out
    assert f"best checkpoint  {best}/" in out and "tensorboard --logdir" in out
    # sample grid: 12 images of 16 px with 2 px padding, 4 per row, enlarged 6x (96 px tiles) and unlabelled
    for path in [best / "samples.png", run / "samples_epoch0002.png", run / "samples_epoch0003.png"]:
        with Image.open(path) as grid:
            assert grid.size == (6 * (4 * 18 + 2), 6 * (3 * 18 + 2)), path
    with Image.open(run / "recon_epoch0003.png") as grid:  # 12 images and their reconstructions, 8 a row: 4 rows
        assert grid.size == (6 * (8 * 18 + 2), 6 * (4 * 18 + 2))
    assert _tensorboard_image_sizes(run, "samples") == [(6 * (4 * 18 + 2), 6 * (3 * 18 + 2))] * 2


def test_loaded_model_matches_training_state(tmp_path, tiny_config):
    main(["train", "--config", str(tiny_config(tmp_path, output={"select": "val_loss"}))])
    best = tmp_path / "best" / "tiny"
    model = vaegen.load(best)
    assert model.classes == ["Golden", "Golden-Red", "Red"]
    assert not model.training
    images = model.sample(5, seed=3)
    assert images.shape == (5, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.sample(5, seed=3))
    assert not torch.equal(images, model.sample(5, seed=4))
    mu, logvar = model.encode(images)
    assert mu.shape == logvar.shape == (5, 8)
    assert model.decode(mu).shape == model.reconstruct(images).shape == (5, 3, 16, 16)
    stored = load_file(str(best / "model.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())


def test_resume_is_exact(tmp_path, tiny_config):
    straight = tiny_config(tmp_path / "a", train={"epochs": 4, "seed": RESUME_SEED}, data={"hflip": True})
    assert main(["train", "--config", str(straight)]) == 0

    halves = tiny_config(tmp_path / "b", train={"epochs": 2, "seed": RESUME_SEED}, data={"hflip": True})
    assert main(["train", "--config", str(halves)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "logs" / "tiny"), "--set", "train.epochs=4"]) == 0

    a, b = tmp_path / "a" / "logs" / "tiny", tmp_path / "b" / "logs" / "tiny"
    weights_a, weights_b = checkpoint_weights(a), checkpoint_weights(b)
    assert weights_a.keys() == weights_b.keys()
    assert max((weights_a[k].float() - weights_b[k].float()).abs().max().item() for k in weights_a) <= 1e-6
    # CPU kernels round differently once tensors live at other addresses: equal to float32 noise
    rows_a, rows_b = metric_rows(a), metric_rows(b)
    assert [row.keys() for row in rows_a] == [row.keys() for row in rows_b]
    assert rows_a == [pytest.approx(row, rel=1e-5, abs=1e-6) for row in rows_b]
    assert load_training_state(b / "checkpoints" / "last.pt")["epoch"] == 4


def test_the_next_epoch_trains_while_the_checkpoint_is_written(tmp_path, monkeypatch, tiny_config):
    import inspect
    import threading

    import vaegen.checkpoint

    epochs_started, written = [], {}
    second_epoch_done = threading.Event()
    real_save, real_epoch = vaegen.checkpoint._torch_save, vaegen.training.loop.train_one_epoch

    def slow_save(state, tmp):
        if state["epoch"] == 1:  # a write in the training thread would wait here for good
            assert second_epoch_done.wait(timeout=60), "epoch 2 did not train while epoch 1's state was being written"
        written[state["epoch"]] = (len(epochs_started), state["model"])
        real_save(state, tmp)

    def epoch(*args, **kwargs):
        number = inspect.signature(real_epoch).bind(*args, **kwargs).arguments["epoch"]
        epochs_started.append(number)
        stats = real_epoch(*args, **kwargs)
        if number == 2:
            second_epoch_done.set()
        return stats

    monkeypatch.setattr(vaegen.checkpoint, "_torch_save", slow_save)
    monkeypatch.setattr(vaegen.training.loop, "train_one_epoch", epoch)
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 3, "seed": RESUME_SEED}))]) == 0
    assert sorted(written) == [1, 2, 3] and written[1][0] == 2  # epoch 1's state was written after epoch 2 trained

    # and what it wrote is the model at the end of epoch 1, not what epoch 2 made of it
    monkeypatch.undo()
    assert main(["train", "--config", str(tiny_config(tmp_path / "one", train={"epochs": 1, "seed": RESUME_SEED}))]) == 0
    after_one, snapshot = checkpoint_weights(tmp_path / "one" / "logs" / "tiny"), written[1][1]
    assert max((after_one[k].float() - snapshot[k].float()).abs().max().item() for k in after_one) <= 1e-6
    assert max((written[2][1][k].float() - snapshot[k].float()).abs().max().item() for k in after_one) > 1e-3

    log = (tmp_path / "logs" / "tiny" / "train.log").read_text()
    (timing,) = [line for line in log.splitlines() if line.startswith("time: ")]
    for phase in ["setup", "training steps", "validation", "evaluation", "best-model exports", "checkpoints"]:
        assert f"{phase} " in timing, phase


def test_resuming_on_other_data_says_so(tmp_path, tiny_config):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    config = tiny_config(tmp_path, data={"root": str(data)}, train={"epochs": 1})
    assert main(["train", "--config", str(config)]) == 0
    run = tmp_path / "logs" / "tiny"
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0  # the same data: nothing to say
    extra = sorted((data / "Red").iterdir())[0]
    shutil.copyfile(extra, extra.with_name("copy-" + extra.name))
    with pytest.warns(UserWarning, match=r"240 training and 60 validation images, and the data now gives 241 and 60"):
        assert main(["train", "--resume", str(run), "--set", "train.epochs=3"]) == 0
    warned = [line for line in (run / "train.log").read_text().splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and str(run / "checkpoints" / "last.pt") in warned[0]


def test_resume_latest_run_of_config(tmp_path, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 1}, output={"run_name": None})
    assert main(["train", "--config", str(config)]) == 0
    (run,) = (tmp_path / "logs").iterdir()
    assert run.name.startswith("tiny-")
    assert main(["train", "--config", str(config), "--resume", "--set", "train.epochs=2"]) == 0
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2]


def explode_at(monkeypatch, now) -> None:
    """The VAE's objective becomes NaN at the training step for which `now()` (called once per step) is true."""
    real_terms = VAE.training_terms

    def terms_that_explode(self, outputs, x, beta, loss):
        terms = real_terms(self, outputs, x, beta, loss)
        if torch.is_grad_enabled() and now():  # training steps only, not validation
            return {**terms, "loss": terms["loss"] * float("nan")}
        return terms

    monkeypatch.setattr(VAE, "training_terms", terms_that_explode)


def test_nan_loss_stops_with_checkpoints_intact(tmp_path, monkeypatch, capsys, tiny_config):
    calls = {"n": 0}
    steps_per_epoch = 240 // 32  # 300 images, 20% validation, full batches only
    explode_at(monkeypatch, lambda: calls.update(n=calls["n"] + 1) or calls["n"] == steps_per_epoch + 3)  # epoch 2, step 3
    config = tiny_config(tmp_path, train={"epochs": 3, "log_every": 100})
    assert main(["train", "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "NaN or infinite at epoch 2, step 3" in err
    assert "optim.lr" in err and "beta.max" in err and "optim.grad_clip" in err
    assert "Traceback" not in err
    run_dir = tmp_path / "logs" / "tiny"
    assert f"vaegen train --resume {run_dir} --set optim.lr=" in err  # the run, not a placeholder
    assert (run_dir / "train.log").read_text().endswith(err.strip().splitlines()[-1] + "\n")  # the log keeps what the console said

    state = load_training_state(tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert json.loads((tmp_path / "best" / "tiny" / "metrics.json").read_text())["epoch"] == 1
    assert torch.isfinite(vaegen.load(tmp_path / "best" / "tiny").sample(2, seed=0)).all()


def test_nan_loss_in_the_first_epoch_does_not_promise_a_checkpoint(tmp_path, capsys, tiny_config):
    assert main(["train", "--config", str(tiny_config(tmp_path, optim={"lr": 1e30}, train={"epochs": 2, "log_every": 1}))]) == 3
    err = capsys.readouterr().err
    assert "NaN or infinite at epoch 1" in err and "before anything was saved" in err and "start the run again" in err
    assert "--resume" not in err and not (tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("setting", ["output.logs_dir", "output.best_dir"])
def test_an_output_folder_that_cannot_be_made_stops_the_run_before_it_trains(tmp_path, capsys, setting, tiny_config):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["train", "--config", str(tiny_config(tmp_path)), "--set", f"{setting}={blocker / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and setting in err and "is a file, not a folder" in err and "Traceback" not in err
    # nothing trained: the best-model folder was once found unwritable only after the first epoch, before last.pt
    assert not (tmp_path / "logs" / "tiny" / "metrics.jsonl").exists()


def test_a_file_where_the_runs_best_model_folder_goes_stops_the_run_before_it_trains(tmp_path, capsys, tiny_config):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "tiny").write_text("not a folder")
    assert main(["train", "--config", str(tiny_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "best" / "tiny") in err and "is a file" in err and "best model folder" in err
    assert not (tmp_path / "logs" / "tiny").exists()


def test_a_failed_checkpoint_write_is_still_reported_when_another_error_stops_the_run(tmp_path, monkeypatch, capsys, tiny_config):
    import vaegen.checkpoint

    def full_disk(state, tmp):
        raise OSError(28, "No space left on device")

    calls = {"n": 0}
    monkeypatch.setattr(vaegen.checkpoint, "_torch_save", full_disk)
    # epoch 2, step 1: the NaN stops the run while epoch 1's write is failing
    explode_at(monkeypatch, lambda: calls.update(n=calls["n"] + 1) or calls["n"] == 240 // 32 + 1)
    with pytest.warns(UserWarning, match=r"checkpoint write in flight failed too.*last\.pt.*No space left"):
        assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 3}))]) == 3
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "NaN or infinite at epoch 2, step 1" in error
    assert not (tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt").exists()


def _samples_drawn_by(weights: dict[str, torch.Tensor], run_dir: Path) -> np.ndarray:
    """The sample picture a run's evaluation draws with `weights`: its fixed codes, decoded by a model that holds them."""
    from vaegen.config import load_config
    from vaegen.models import build_model
    from vaegen.training.loop import sample_picture

    config = load_config(run_dir / "config.yaml")
    model = build_model(config.model, config.data.image_size, config.data.channels, 3)
    model.load_state_dict(weights)
    fixed_z = torch.randn(config.eval.num_grid, config.model.latent_dim, generator=torch.Generator().manual_seed(config.train.seed + 2))
    return np.asarray(sample_picture(model.eval(), fixed_z, ["Golden", "Golden-Red", "Red"], torch.device("cpu")))


def _picture_epochs(run_dir: Path) -> dict[str, list[int]]:
    return {kind: sorted(int(path.stem[-4:]) for path in run_dir.glob(f"{kind}_epoch*.png")) for kind in ["samples", "recon"]}


def _assert_best_model_is_one_epoch(best: Path) -> None:
    """Whatever best_models/<run>/ holds describes the weights beside it: metrics of their epoch, their samples."""
    model = vaegen.load(best)
    epoch = model.metadata["epoch"]
    if (best / "metrics.json").exists():
        assert json.loads((best / "metrics.json").read_text())["epoch"] == epoch
    if (best / "samples.png").exists():
        with Image.open(best / "samples.png") as picture:
            assert np.array_equal(np.asarray(picture), _samples_drawn_by(model.state_dict(), best))


class _CtrlCInScoring:
    """An evaluation network whose scoring (FID, the slow part of an evaluation) is interrupted by Ctrl+C in `epoch`."""

    def __init__(self, monkeypatch, epoch: int):
        self.epoch, self.calls = epoch, 0
        network = type("Network", (), {"networks": ["fake"], "real": range(10), "backbone": type("Backbone", (), {"name": "fake"})})
        monkeypatch.setattr(vaegen.training.loop, "run_evaluator", lambda *args: network)
        monkeypatch.setattr(vaegen.training.loop, "score_model", self)

    def __call__(self, *args) -> dict:
        self.calls += 1  # eval.every: 1, so the call number is the epoch
        if self.calls == self.epoch:
            raise KeyboardInterrupt
        return {"protocol": {}, "fd_fake": 100.0 - self.calls}


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_ctrl_c_during_an_evaluation_leaves_only_pictures_a_checkpoint_holds(tmp_path, monkeypatch, checkpoint_every, tiny_config):
    """Ctrl+C during epoch 4's evaluation once left samples_epoch0004.png (and, between checkpoints, epoch 3's)
    beside an earlier last.pt: pictures of a model state no checkpoint holds. Pictures now follow the checkpoint."""
    _CtrlCInScoring(monkeypatch, epoch=4)
    config = tiny_config(tmp_path, train={"epochs": 5}, eval={"every": 1}, output={"checkpoint_every": checkpoint_every})
    assert main(["train", "--config", str(config)]) == 130
    run, best = tmp_path / "logs" / "tiny", tmp_path / "best" / "tiny"
    state = load_training_state(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 4 - checkpoint_every  # epoch 3, or epoch 2 with a checkpoint every second epoch
    held = list(range(1, state["epoch"] + 1))
    assert _picture_epochs(run) == {"samples": held, "recon": held}
    with Image.open(run / f"samples_epoch{state['epoch']:04d}.png") as latest:
        assert np.array_equal(np.asarray(latest), _samples_drawn_by(state["model"], run))
    _assert_best_model_is_one_epoch(best)

    # the resumed run draws the epochs after the checkpoint again, and a run that ends has every epoch's pictures
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert _picture_epochs(run) == {"samples": [1, 2, 3, 4, 5], "recon": [1, 2, 3, 4, 5]}
    with Image.open(run / "samples_epoch0005.png") as latest:
        assert np.array_equal(np.asarray(latest), _samples_drawn_by(checkpoint_weights(run), run))
    _assert_best_model_is_one_epoch(best)


def test_ctrl_c_during_a_best_model_export_leaves_the_previous_best_whole(tmp_path, monkeypatch, tiny_config):
    """The export once wrote the weights first: stopped before the samples, it left the previous best's samples.png
    and metrics.json beside the new weights. Now nothing of an export lands until all of it is written."""
    real_save_png, best = vaegen.training.loop.save_png, tmp_path / "best" / "tiny"
    exports = []

    def save_png(image, path):
        if path == best / "samples.png":
            exports.append(path)
            if len(exports) == 2:  # the second export: its weights and config are written, its samples are not yet
                raise KeyboardInterrupt
        real_save_png(image, path)

    monkeypatch.setattr(vaegen.training.loop, "save_png", save_png)
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 3}, eval={"every": 1}))]) == 130
    assert len(exports) == 2
    assert vaegen.load(best).metadata["epoch"] == 1  # the first export, whole: its weights, metrics and samples
    assert json.loads((best / "metrics.json").read_text())["epoch"] == 1 and (best / "samples.png").is_file()
    _assert_best_model_is_one_epoch(best)
    assert sorted(path.name for path in best.iterdir()) == ["README.md", "config.yaml", "metrics.json", "model.safetensors", "samples.png"]


def _tensorboard_image_sizes(run: Path, tag: str) -> list[tuple[int, int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return [(image.width, image.height) for image in events.Images(tag)]


def _ink(picture: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Whether `box` of `picture` holds dark (text) pixels."""
    return bool((np.asarray(picture.convert("L").crop(box)) < 128).any())


def test_grayscale_and_conditional_end_to_end(tmp_path, tiny_config):
    config = tiny_config(tmp_path, data={"channels": 1}, model={"conditional": "onehot"}, train={"epochs": 1})
    assert main(["train", "--config", str(config)]) == 0
    best, run = tmp_path / "best" / "tiny", tmp_path / "logs" / "tiny"
    with Image.open(best / "samples.png") as grid, Image.open(run / "samples_epoch0001.png") as latest:
        assert grid.mode == "L"
        # one block per class, 12 // 3 = 4 samples in each, with the class names in a left margin
        block = 6 * (4 * 18 + 2)
        margin = grid.width - block
        assert margin > 0 and grid.height == 6 * (3 * 18 + 2)
        assert all(_ink(grid, (0, 6 * 18 * k, margin, 6 * 18 * (k + 1))) for k in range(3)), "a class has no name"
        # the epoch's evaluation and the best-model export draw the picture separately: the same pixels
        assert np.array_equal(np.asarray(grid), np.asarray(latest))
    assert _tensorboard_image_sizes(run, "samples") == [(grid.width, grid.height)]
    model = vaegen.load(best)
    images = model.sample(3, labels=[0, 1, 2], seed=0)
    assert images.shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="pass labels"):
        model.sample(3)


def test_conditional_samples_are_labelled_blocks_of_the_same_draws_at_every_evaluation():
    """samples_epoch*.png once cycled the classes across unlabelled columns; each class is now a labelled block,
    drawn from the same codes (the prior) or the same seeded mixture draws at every evaluation."""
    from vaegen.config import ModelConfig
    from vaegen.models import build_model
    from vaegen.plots import image_grid, scaled, to_pil
    from vaegen.samplers.mixture import LatentGMM
    from vaegen.training.loop import sample_picture

    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=8, widths=(8, 16), conditional="onehot"), (16, 16), 3, 3).eval()
    classes, cpu = ["Golden", "Golden-Red", "Red"], torch.device("cpu")
    fixed_z = torch.randn(12, 8, generator=torch.Generator().manual_seed(2))
    picture = sample_picture(model, fixed_z, classes, cpu)
    block = 6 * (4 * 18 + 2)  # 12 // 3 = 4 samples per class in one row, 16 px tiles enlarged 6x
    margin = picture.width - block
    assert margin > 0 and picture.height == 6 * (3 * 18 + 2)
    tiles = np.asarray(picture)[:, margin:]
    with torch.no_grad():
        for k in range(3):  # block k: the first four codes of fixed_z, decoded as class k
            expected = np.asarray(scaled(to_pil(image_grid(model.decode(fixed_z[:4], torch.full((4,), k)), nrow=4)), 6))
            assert np.array_equal(tiles[6 * 18 * k : 6 * 18 * k + 6 * 20], expected)
            assert _ink(picture, (0, 6 * 18 * k, margin, 6 * 18 * (k + 1))), f"class {k} has no name"
    torch.manual_seed(1)  # training moved the global random stream on before the next evaluation
    assert np.array_equal(np.asarray(sample_picture(model, fixed_z, classes, cpu)), np.asarray(picture))

    # a fitted mixture: one component per class, far apart, so each block shows its own class's codes
    eye = torch.eye(8).expand(3, 1, 8, 8)
    density = LatentGMM(torch.ones(3, 1), torch.arange(3.0)[:, None, None].expand(3, 1, 8) * 3, eye.clone(), "full")
    drawn = sample_picture(model, fixed_z, classes, cpu, density)
    torch.manual_seed(2)
    assert drawn.size == picture.size and np.array_equal(np.asarray(sample_picture(model, fixed_z, classes, cpu, density)), np.asarray(drawn))
    assert not np.array_equal(np.asarray(drawn), np.asarray(picture))


def test_new_run_refuses_to_overwrite_named_run(tmp_path, capsys, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 1})
    assert main(["train", "--config", str(config)]) == 0
    before = (tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", "--config", str(config)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt").read_bytes() == before


def test_new_run_refuses_to_overwrite_the_best_model_of_a_run_whose_log_folder_is_gone(tmp_path, capsys, tiny_config):
    import shutil

    config = tiny_config(tmp_path, train={"epochs": 1})
    assert main(["train", "--config", str(config)]) == 0
    shutil.rmtree(tmp_path / "logs")
    best = tmp_path / "best" / "tiny"
    before = {path.name: path.read_bytes() for path in best.iterdir()}

    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(best) in err and "already holds the best model" in err
    assert {path.name: path.read_bytes() for path in best.iterdir()} == before
    assert not (tmp_path / "logs" / "tiny").exists()


def test_the_done_block_is_kept_in_train_log(tmp_path, capsys, tiny_config):
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 1}))]) == 0
    out = capsys.readouterr().out
    done = out[out.index("\ndone: "):]
    assert (tmp_path / "logs" / "tiny" / "train.log").read_text().endswith(done)


def test_wandb_offline_logs_without_network(tmp_path, monkeypatch, tiny_config):
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(tmp_path, train={"epochs": 1}, logging={"wandb": "offline"})
    assert main(["train", "--config", str(config)]) == 0
    runs = list((tmp_path / "logs" / "tiny" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "apples").is_dir(), reason="../shared/data/apples is absent")
def test_acceptance_command_on_shared_apples(tmp_path, monkeypatch):
    """The issue's acceptance command: train_apples.yaml on the full apples set, 2 epochs at 32 px."""
    monkeypatch.chdir(tmp_path)
    code = main([
        "train", "--config", str(REPO / "configs" / "train_apples.yaml"),
        "--set", f"data.root={REPO.parent / 'shared' / 'data' / 'apples'}",
        "--set", "train.epochs=2", "--set", "data.image_size=32",
        "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--set", "eval.num_samples=128", "--set", "eval.reference=val",
    ])
    assert code == 0
    (run,) = (tmp_path / "logs").iterdir()
    (best,) = (tmp_path / "best_models").iterdir()
    assert run.name == best.name and run.name.startswith("train_apples-")
    assert (run / "checkpoints" / "last.pt").is_file() and (best / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[1]["val_loss"] < rows[0]["val_loss"]


def test_resume_applies_new_learning_rate(tmp_path, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 1})
    assert main(["train", "--config", str(config)]) == 0
    run = tmp_path / "logs" / "tiny"
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--set", "optim.lr=1e-5"]) == 0
    assert [row["lr"] for row in metric_rows(run)] == [1e-3, 1e-5]
    assert load_training_state(run / "checkpoints" / "last.pt")["optimizer"]["param_groups"][0]["lr"] == 1e-5
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 1e-5


def test_wall_time_adds_up_across_a_resume_and_is_not_guessed_for_older_rows(tmp_path, tiny_config):
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 1}))]) == 0
    run = tmp_path / "logs" / "tiny"
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0 < rows[0]["wall_s"] < rows[1]["wall_s"]  # the resumed epoch counts on from the first run's time
    # rows from before wall_s was logged: the resumed epochs do not know the past, so they write none
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in row.items() if k != "wall_s"}) + "\n" for row in rows))
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3"]) == 0
    assert not any("wall_s" in row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()))


def test_checkpoint_every_writes_the_training_state_less_often(tmp_path, monkeypatch, tiny_config):
    saved_epochs = []
    real_save = vaegen.training.loop.save_training_state
    monkeypatch.setattr(vaegen.training.loop, "save_training_state", lambda path, state: (saved_epochs.append(state["epoch"]), real_save(path, state)))
    config = tiny_config(tmp_path, train={"epochs": 5}, output={"checkpoint_every": 2})
    assert main(["train", "--config", str(config)]) == 0
    assert saved_epochs == [2, 4, 5]  # every second epoch, and always the last
    assert len(metric_rows(tmp_path / "logs" / "tiny")) == 5


def test_an_epoch_that_ends_during_a_write_leaves_its_state_to_the_next_one(tmp_path, monkeypatch, tiny_config):
    """A fast GPU can end epochs faster than the disk takes a state: training does not wait for the disk.
    The state is written at the first epoch end that finds the writer free; the last epoch always writes."""
    import threading

    disk_free = threading.Event()
    saved_epochs = []
    real_save, real_log = vaegen.training.loop.save_training_state, vaegen.training.loop.Tracker.log_epoch

    def slow_save(path, state):
        if state["epoch"] == 1:
            assert disk_free.wait(timeout=60)  # epoch 1's write takes until epoch 3 has ended
        saved_epochs.append(state["epoch"])
        real_save(path, state)

    def log_epoch(self, row):
        real_log(self, row)
        if row["epoch"] == 3:
            disk_free.set()

    monkeypatch.setattr(vaegen.training.loop, "save_training_state", slow_save)
    monkeypatch.setattr(vaegen.training.loop.Tracker, "log_epoch", log_epoch)
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 4}))]) == 0
    # epoch 2 ended while epoch 1's write was going; epoch 3 may find it still finishing
    assert saved_epochs in ([1, 3, 4], [1, 4])
    assert load_training_state(tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt")["epoch"] == 4


def _one_step(skip_grad_norm: float | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    from vaegen.config import config_from_dict
    from vaegen.training.accel import resolve_step_options
    from vaegen.training.loop import train_step
    from vaegen.training.run import build_run

    config = config_from_dict({
        "data": {"root": str(SAMPLE), "image_size": 16}, "model": {"latent_dim": 8, "widths": [8, 16]},
        "optim": {"lr": 1e-2, "skip_grad_norm": skip_grad_norm}, "eval": {"backbone": "none"}, "output": {"select": "val_nelbo"},
    })
    device = torch.device("cpu")
    torch.manual_seed(0)
    run = build_run(config, device, resolve_step_options(config.train, config.data, device, 1), ["a", "b", "c"])
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    terms = train_step(run, x, None, 1.0)  # the family's terms, then the skipped flag
    return {name: p.detach().clone() for name, p in run.model.named_parameters()}, terms


def test_gradient_norm_skip_drops_only_the_updates_above_the_threshold():
    from vaegen.config import ModelConfig
    from vaegen.models import build_model

    torch.manual_seed(0)  # the starting weights of every _one_step
    initial = dict(build_model(ModelConfig(latent_dim=8, widths=(8, 16)), (16, 16), 3, 3).named_parameters())
    plain, _ = _one_step(None)
    skipped, terms_skipped = _one_step(1e-9)
    assert terms_skipped[-1].item() == 1.0
    assert all(torch.equal(skipped[k], initial[k]) for k in initial)  # nothing moved
    kept, terms_kept = _one_step(1e9)
    assert terms_kept[-1].item() == 0.0
    assert all(torch.equal(kept[k], plain[k]) for k in plain)  # a threshold never reached changes nothing
    assert any(not torch.equal(kept[k], initial[k]) for k in initial)
    assert torch.equal(terms_kept[:-1], terms_skipped[:-1])  # the losses are those of the batch either way


def test_skipped_updates_are_counted_per_epoch(tmp_path, tiny_config):
    config = tiny_config(tmp_path, optim={"skip_grad_norm": 1e-12}, train={"epochs": 2})
    assert main(["train", "--config", str(config)]) == 0
    rows = metric_rows(tmp_path / "logs" / "tiny")
    steps = 240 // 32  # the sample's 301 images less its 20 % validation split, full batches
    assert [row["skipped_steps"] for row in rows] == [steps, steps]
    assert rows[0]["train_loss"] == pytest.approx(rows[1]["train_loss"], rel=0.05)  # it never learned


def test_a_non_positive_skip_threshold_is_refused(tmp_path, capsys, tiny_config):
    assert main(["train", "--config", str(tiny_config(tmp_path, optim={"skip_grad_norm": 0}))]) == 2
    assert "optim.skip_grad_norm" in capsys.readouterr().err


def test_training_without_a_validation_split_evaluates_and_draws_training_reconstructions(tmp_path, capsys, tiny_config):
    """data.val_fraction: 0, which the one-image-per-class error recommends: no validation terms, the rest as usual."""
    config = tiny_config(
        tmp_path, data={"val_fraction": 0}, train={"epochs": 2}, eval={"every": 1, "backbone": "efficientnet-lite0", "num_samples": 16},
        output={"select": "fid"},
    )
    assert main(["train", "--config", str(config)]) == 0
    run = tmp_path / "logs" / "tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert not any(key.startswith("val_") for row in rows for key in row)
    assert all(row["fd_efficientnet_lite0"] > 0 for row in rows)
    assert (run / "recon_epoch0002.png").is_file() and (tmp_path / "best" / "tiny" / "model.safetensors").is_file()
    assert "300 train / 0 val images" in capsys.readouterr().out
