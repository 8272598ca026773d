"""`vaegen tune`: sweeps through Ray Tune + Optuna on a tiny dataset, failed trials, resume, config errors."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import SAMPLE, read_summary
from PIL import Image

import vaegen
from vaegen.apps.cli import main

pytest.importorskip("ray.tune", reason="vaegen tune needs ray[tune] (pip install 'vaegen[tune]')")
pytest.importorskip("optuna", reason="vaegen tune needs optuna (pip install 'vaegen[tune]')")


class RayStarted(Exception):
    """Raised in place of ray.init: the sweep got as far as starting Ray."""


@pytest.fixture
def ray_never_starts(monkeypatch):
    import ray

    def init(*args, **kwargs):
        raise RayStarted

    monkeypatch.setattr(ray, "init", init)


@pytest.fixture
def tuner_never_runs(monkeypatch):
    """Ray starts (a no-op here) and the sweep gets as far as building or restoring its tuner, which raises RayStarted;
    `tuner_never_runs.exists` is what Tuner.can_restore answers."""
    import ray
    from ray import tune

    class Tuner:
        exists = False

        def __init__(self, *args, **kwargs):
            raise RayStarted

        @staticmethod
        def can_restore(path) -> bool:
            return Tuner.exists

        @classmethod
        def restore(cls, *args, **kwargs):
            raise RayStarted

    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: None)
    monkeypatch.setattr(tune, "Tuner", Tuner)
    return Tuner


@pytest.fixture
def ray_trial_log():
    """What Ray's trial runner logs (trial failures), as the console shows it: tracebacks included."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)  # pytest cannot capture Ray's own handler: it keeps the stderr of its import
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    logger.addHandler(handler)
    yield text
    logger.removeHandler(handler)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@pytest.fixture
def ray_and_optuna_console():
    """Every line Ray's and Optuna's loggers put on the console, as "LEVEL logger: message" (pytest cannot capture
    Ray's own handler, see ray_trial_log); after the test, checks that the sweep put their log levels back."""
    import optuna

    records = _Records()
    loggers = [logging.getLogger("ray"), logging.getLogger("optuna")]
    ray_level, optuna_level = loggers[0].level, optuna.logging.get_verbosity()
    for logger in loggers:
        logger.addHandler(records)
    yield records.lines
    for logger in loggers:
        logger.removeHandler(records)
    assert (loggers[0].level, optuna.logging.get_verbosity()) == (ray_level, optuna_level)


# what Ray and Optuna printed in every sweep, and vaegen's console says better (or there is nothing to do about)
SAID_BY_VAEGEN = ("Token authentication is enabled", "Started a local Ray instance", "A new study created",
                  "Wrote the latest version of all result files", "Trials did not complete")


def assert_only_what_vaegen_does_not_say(console: str | list[str]) -> None:
    text = console if isinstance(console, str) else "\n".join(console)
    for line in SAID_BY_VAEGEN:
        assert line not in text
    if isinstance(console, list):  # records: no INFO or DEBUG line of Ray's or Optuna's at all
        assert [line for line in console if line.split(" ", 1)[0] in ("INFO", "DEBUG")] == []


def test_sweep_with_a_failing_trial_writes_summary_plot_and_best(tmp_path, capsys, ray_trial_log,
                                                                 ray_and_optuna_console, tiny_sweep):
    # the three trials are pinned, so the test knows which one must fail: lr 5 makes the loss NaN in the first
    # epoch (a value the config refuses, batch size 0, is refused before the sweep starts)
    config = tiny_sweep(
        tmp_path,
        {"optim.lr": {"loguniform": [1e-4, 10]}, "train.batch_size": {"choice": [16, 32]}},
        points_to_evaluate=[
            {"optim.lr": 3e-3, "train.batch_size": 16},
            {"optim.lr": 5, "train.batch_size": 32},
            {"optim.lr": 1e-3, "train.batch_size": 32},
        ],
    )
    assert main(["tune", "--config", str(config)]) == 0
    out = capsys.readouterr().out

    rows = read_summary(tmp_path)
    assert len(rows) == 3
    assert list(rows[0]) == ["trial", "optim.lr", "train.batch_size", "best_fd_efficientnet_lite0", "epoch", "status", "error"]
    failed = [row for row in rows if row["status"] == "failed"]
    finished = [row for row in rows if row["status"] != "failed"]
    # ASHA (grace period 1 epoch, keep the best third) may stop the weaker trial after its first epoch
    assert len(failed) == 1 and {row["status"] for row in finished} <= {"finished", "stopped early"}
    assert "finished" in {row["status"] for row in finished}
    assert float(failed[0]["optim.lr"]) == 5
    assert failed[0]["error"].startswith("the loss became NaN") and failed[0]["best_fd_efficientnet_lite0"] == ""
    assert sorted(row["train.batch_size"] for row in finished) == ["16", "32"]
    scores = [float(row["best_fd_efficientnet_lite0"]) for row in finished]
    assert all(0 < score < 1000 for score in scores)
    assert "failed" in out and "fd_efficientnet_lite0" in out
    assert "1 of 3 trials failed; the sweep went on without them" in out
    table_row = next(line for line in out.splitlines() if line.split()[:1] == [failed[0]["trial"]])
    assert table_row.split()[-1] == "failed" and " - " in table_row and "<NA>" not in out  # no score, no epoch
    assert "sweep tiny: 3 trials (1 failed) in " in out
    # vaegen's lines say what happens as it happens, in place of Ray's tables and its TensorBoard hint
    sweep_dir = tmp_path / "logs" / "tiny"
    header = out.splitlines()[0]
    assert header.startswith("starting sweep tiny: 3 trials, 2 at a time") and str(sweep_dir / "trials") in header
    assert "tensorboard --logdir /tmp/ray" not in out and "Trial status" not in out and "╭" not in out
    for row in rows:
        assert f"trial {row['trial']} started: optim.lr={float(row['optim.lr']):.3g}, " \
               f"train.batch_size={row['train.batch_size']}\n" in out
    ended = {"finished": "finished: 2 of 2 epochs", "stopped early": "stopped early by ASHA: 1 of 2 epochs"}
    for row in finished:
        best = float(row["best_fd_efficientnet_lite0"])
        assert f"trial {row['trial']} {ended[row['status']]}, best fd_efficientnet_lite0 {best:.4g} " \
               f"(epoch {row['epoch']})\n" in out
        assert f"trial {row['trial']}  epoch 1/2  fd_efficientnet_lite0 " in out
    assert f"trial {failed[0]['trial']} failed: {failed[0]['error']}\n" in out
    evaluations = sum(2 if row["status"] == "finished" else 1 for row in finished)
    assert out.count("  best so far ") == evaluations
    leader = min(finished, key=lambda row: float(row["best_fd_efficientnet_lite0"]))["trial"]
    last_evaluation = [line for line in out.splitlines() if "  best so far " in line][-1]
    assert last_evaluation.endswith(f"best so far {min(scores):.4g} ({leader})")
    # the trial's vaegen error is said once, in the line above: Ray's log adds neither it nor its traceback
    assert ray_trial_log.getvalue() == ""
    # nor which trials did not complete, nor its and Optuna's INFO lines (Ray started, study created, state written)
    assert_only_what_vaegen_does_not_say(ray_and_optuna_console)

    with Image.open(tmp_path / "logs" / "tiny" / "fid_vs_params.png") as plot:
        assert plot.size[0] > 400

    best = tmp_path / "best" / "tiny-best"
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["criterion"] == "fd_efficientnet_lite0"
    assert metrics["value"] == pytest.approx(min(scores))
    winner = next(row for row in finished if float(row["best_fd_efficientnet_lite0"]) == min(scores))
    sweep_info = json.loads((best / "sweep.json").read_text())
    assert sweep_info["trial"] == winner["trial"]
    # the same folder layout `vaegen train` writes: loadable by the API, `vaegen test` and the gallery
    model = vaegen.load(best)
    assert model.config.train.batch_size == int(winner["train.batch_size"])
    assert model.sample(2, seed=0).shape == (2, 3, 16, 16)

    # every trial is an ordinary run folder: its config, metrics per epoch, curves
    for row in finished:
        run = tmp_path / "logs" / "tiny" / "trials" / row["trial"]
        epochs = [1, 2] if row["status"] == "finished" else [1]
        assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == epochs
        assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(float(row["optim.lr"]))
        assert (run / "curves.png").is_file()


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, capsys, ray_and_optuna_console, tiny_sweep):
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}}, max_concurrent=1, scheduler="fifo")
    trials = tmp_path / "logs" / "tiny" / "trials"
    command = [sys.executable, "-m", "vaegen", "tune", "--config", str(config)]
    # Ray's default, token authentication, as a user meets it (the token in the environment, not in ~/.ray)
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_MODE"}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                             env=env)
    try:
        # interrupt once the first trial has finished and the second has begun
        deadline = time.monotonic() + 600  # a bound on waiting, not a speed goal: loaded CI machines are slow
        while time.monotonic() < deadline and len(list(trials.glob("*/metrics.jsonl"))) < 2:
            time.sleep(0.5)
        assert len(list(trials.glob("*/metrics.jsonl"))) >= 2, "the sweep never reached its second trial"
        sweep.send_signal(signal.SIGINT)
        output, _ = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, output
    assert "--resume" in output and "Tuner.restore" not in output  # vaegen's way to continue, not Ray's
    assert "starting sweep tiny: 3 trials, 1 at a time, in " in output and "╭" not in output
    assert_only_what_vaegen_does_not_say(output)  # the whole console of a real process: stdout and stderr

    starts_before = {run.name: (run / "train.log").read_text().count("\nmodel:") for run in trials.iterdir()}
    first = min(trials.iterdir(), key=lambda run: (run / "params.json").stat().st_mtime)
    assert len((first / "metrics.jsonl").read_text().splitlines()) == 2  # it had finished

    assert main(["tune", "--config", str(config), "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resuming sweep tiny: 3 trials, 1 at a time, in ") and "╭" not in out
    assert_only_what_vaegen_does_not_say(ray_and_optuna_console)
    rows = read_summary(tmp_path)
    assert len(rows) == 3 and {row["status"] for row in rows} == {"finished"}
    starts_after = {run.name: (run / "train.log").read_text().count("\nmodel:") for run in trials.iterdir()}
    assert starts_after[first.name] == starts_before[first.name] == 1  # not run again
    assert f"trial {first.name} started" not in out
    assert sum(starts_after.values()) <= 4  # the interrupted trial continued once, nothing else repeated


def test_resume_of_a_sweep_that_never_ran_is_refused(tmp_path, capsys, tiny_sweep):
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}})
    assert main(["tune", "--config", str(config), "--resume"]) == 2
    assert "no sweep 'tiny' to continue" in capsys.readouterr().err


def test_data_errors_of_a_sweep_name_its_own_keys_before_anything_else(tmp_path, capsys, monkeypatch, recwarn, ray_never_starts, tiny_sweep):
    import vaegen.evaluation.backbones

    # eval.backbone auto without Inception weights: falls back to efficientnet-lite0, with a warning
    monkeypatch.delenv("VAEGEN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(vaegen.evaluation.backbones, "_hub_checkpoints", lambda: tmp_path / "no-hub")
    missing = (tmp_path / "data" / "apples").resolve()  # as load_sweep makes it
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}})
    sweep = yaml.safe_load(config.read_text())
    sweep["base"]["data"]["root"] = str(missing)
    sweep["base"]["eval"]["backbone"] = "auto"
    config.write_text(yaml.safe_dump(sweep))

    # in a sweep `--set data.root=...` is refused; the data of every trial is set through `overrides:`
    assert main(["tune", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: overrides.data.root {missing} does not exist") and len(err.splitlines()) == 1
    assert "--set overrides.data.root=" in err and "--set data.root" not in err
    assert not [warning for warning in recwarn if "backbone" in str(warning.message)]  # it waits for the data
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep.yaml"]  # no logs/, best/ or cache/

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("RGB", (20, 20), "red").save(broken / "good.png")
    (broken / "bad.png").write_bytes(b"not an image")
    assert main(["tune", "--config", str(config), "--set", f"overrides.data.root={broken}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of 2 image(s)") and "bad.png (not an image" in err
    assert "--set overrides.data.skip_bad=true" in err and "data.skip_bad: true" not in err.replace("overrides.data.skip_bad", "")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken", "sweep.yaml"]

    # what the message says to do works: the data loads, then the evaluation's warning, then Ray starts
    with pytest.warns(UserWarning, match="backbone auto: no weights-inception"), pytest.raises(RayStarted):
        main(["tune", "--config", str(config), "--set", f"overrides.data.root={SAMPLE}"])


@pytest.mark.parametrize(
    ("space", "tune", "message"),
    [
        ({"optim.lrr": {"loguniform": [1e-4, 1e-2]}}, {}, "unknown key `optim.lrr`; did you mean `lr`?"),
        ({"modell.latent_dim": {"choice": [8, 16]}}, {}, "unknown key `modell`; did you mean `model`?"),
        ({"model": {"choice": [8, 16]}}, {}, "`model` is a whole section"),
        ({"optim.lr": {"loguniform": [1e-2, 1e-4]}}, {}, "the low end must be below the high end"),
        ({"optim.lr": {"loguniform": [1e-4, 1e-2], "choice": [1]}}, {}, "give exactly one of"),
        ({"optim.lr": {"logunifrom": [1e-4, 1e-2]}}, {}, "unknown key `space.optim.lr.logunifrom`; did you mean `loguniform`?"),
        ({"eval.backbone": {"choice": ["none", "inception"]}}, {}, "the sweep fixes for every trial"),
        ({"optim.lr": {"uniform": [0.1, 0.2]}}, {"points_to_evaluate": [{"optim.beta": 1}]}, "does not search"),
        ({"optim.lr": {"uniform": [0.1, 0.2]}}, {"num_sample": 4}, "unknown key `tune.num_sample`; did you mean `num_samples`?"),
        ({"optim.lr": {"uniform": [0.1, 0.2]}}, {"grace_period": 3}, "tune.grace_period is 3 epochs but the trials train for at most 2"),
        # a space some of whose trials no config takes: each value a trial can draw at an end, and every choice
        ({"optim.lr": {"uniform": [-1e-3, 1e-2]}}, {},
         ("`optim.lr` with {uniform: [-0.001, 0.01]}", "its low end", "`optim.lr` = -0.001", "greater than 0")),
        ({"data.val_fraction": {"loguniform": [0.01, 2.0]}}, {}, ("`data.val_fraction`", "its high end", "less than 1")),
        ({"train.batch_size": {"int": [0, 32]}}, {},
         ("`train.batch_size` with {int: [0, 32]}", "its low end", "greater than or equal to 1")),
        ({"model.name": {"choice": ["conv_vae", "convvae"]}}, {},
         ("one of its choices", "`model.name` = 'convvae'", "unknown model")),
        # refused only beside data.image_size 16 (not searched)
        ({"optim.lr": {"uniform": [0.1, 0.2]}, "model.widths": {"choice": [[8, 16], [8, 16, 32, 64, 128]]}}, {},
         ("`model.widths`", "one of its choices", "not divisible by 32")),
        # a model family's own rule: an autoencoder has no prior to sample (the base samples from the prior)
        ({"optim.lr": {"uniform": [0.1, 0.2]}, "model.name": {"choice": ["conv_vae", "conv_ae"]}}, {},
         ("`model.name`", "one of its choices", "sampler.name")),
    ],
)
def test_bad_sweep_files_are_named_before_ray_starts(tmp_path, capsys, monkeypatch, space, tune, message, tiny_sweep):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started although the sweep file is wrong"))
    config = tiny_sweep(tmp_path, space, **tune)
    assert main(["tune", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert all(phrase in err for phrase in ((message,) if isinstance(message, str) else message)), err
    assert "Traceback" not in err


def test_a_base_config_its_model_family_refuses_is_named_before_ray_starts(tmp_path, capsys, monkeypatch, tiny_sweep):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started although the base config is refused"))
    path = tiny_sweep(tmp_path, {"optim.lr": {"uniform": [1e-4, 1e-3]}})
    sweep = yaml.safe_load(path.read_text())
    sweep["base"]["model"]["name"] = "conv_ae"  # samples only through a fitted mixture; the base asks for the prior
    path.write_text(yaml.safe_dump(sweep))
    assert main(["tune", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "(base train config) is refused" in err and "sampler.name" in err and "Traceback" not in err


@pytest.mark.parametrize("space", [
    {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "train.batch_size": {"int": [1, 32]},
     "model.name": {"choice": ["conv_vae", "res_vae"]}},
    # values valid only together with some of the other searched values: the trials that meet them run
    {"beta.schedule": {"choice": ["cyclic"]}, "beta.warmup": {"int": [1, 30]}, "beta.cycle": {"int": [10, 40]}},
    {"data.image_size": {"choice": [16, 24]}, "model.widths": {"choice": [[8, 16], [8, 16, 32, 64]]}},
])
def test_a_space_whose_values_make_valid_trials_starts_ray(tmp_path, ray_never_starts, space, tiny_sweep):
    with pytest.raises(RayStarted):
        main(["tune", "--config", str(tiny_sweep(tmp_path, space))])


def test_a_sweep_whose_every_trial_fails_exits_with_the_first_error(tmp_path, capsys, ray_trial_log,
                                                                     ray_and_optuna_console, tiny_sweep):
    # lr 5 makes the loss NaN in the first epoch; a sweep has no use for `vaegen train --resume` advice
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 10]}}, num_samples=1, scheduler="fifo",
                        points_to_evaluate=[{"optim.lr": 5}])
    assert main(["tune", "--config", str(config)]) == 3  # TrainingDiverged's code
    out, err = capsys.readouterr()
    (row,) = read_summary(tmp_path)
    assert row["status"] == "failed" and row["error"].startswith("the loss became NaN or infinite at epoch 1")
    message = err.split("error: ")[-1]
    assert message.startswith("no trial of sweep 'tiny' succeeded: all 1 failed")
    assert f"{row['trial']} (optim.lr=5)" in message and "the loss became NaN" in message
    assert "in the sweep's `space:` or `overrides:`" in message and "--set tune.name=NEW_NAME" in message
    assert str(tmp_path / "logs" / "tiny" / "summary.csv") in message and len(message.strip().splitlines()) == 1
    assert "then start the run again" not in err and "vaegen train --resume" not in err
    assert "Traceback" not in err
    assert f"trial {row['trial']} failed: {row['error']}\n" in out
    assert ray_trial_log.getvalue() == ""  # said once, by vaegen's console line
    assert_only_what_vaegen_does_not_say(ray_and_optuna_console)
    assert not (tmp_path / "best").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("space.optim.lr={}", "`space.optim.lr`: give exactly one of loguniform: [low, high], uniform: [low, high]"),
        ("base=[1, 2]", "1 problem: `base` = [1, 2] is not allowed: base is the path of a train config file (relative"),
        ("space.train.epochs={loguniform: [1, 3]}", "space searches train.epochs with {loguniform: [1.0, 3.0]}, "
         "but a trial trains for a whole number of epochs (at least 1). Search it with int: [low, high]"),
        ("space.train.epochs={choice: [2, abc]}", "space searches train.epochs with {choice: [2, abc]}, but a trial"),
        ("space.train.epochs={uniform: [1, 3]}", "or a choice of whole numbers (e.g. {choice: [10, 20, 40]})"),
        ("space={}", "`space`: space is empty, so there is nothing to search; name at least one setting"),
    ],
)
def test_bad_set_overrides_of_a_sweep_are_named_before_ray_starts(tmp_path, capsys, monkeypatch, override, message, tiny_sweep):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started although the sweep is wrong"))
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "model.latent_dim": {"choice": [8, 16]}})
    assert main(["tune", "--config", str(config), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and "lax-or-strict" not in err


def test_asha_runs_trials_to_the_most_epochs_the_space_searches(tmp_path, monkeypatch, tiny_sweep):
    import ray
    import ray.tune.schedulers

    class Built(Exception):
        pass

    def asha(**settings):
        raise Built(settings)

    monkeypatch.setattr(ray, "init", lambda *a, **k: None)
    monkeypatch.setattr(ray.tune.schedulers, "ASHAScheduler", asha)
    # the base trains 2 epochs; ASHA's max_t was those 2, and a grace period of 3 failed its assertion
    config = tiny_sweep(tmp_path, {"train.epochs": {"int": [1, 4]}}, grace_period=3)
    with pytest.raises(Built) as built:
        main(["tune", "--config", str(config)])
    assert built.value.args[0]["max_t"] == 4


def test_unreachable_cluster_address_is_named_within_seconds(tmp_path, tiny_sweep):
    import socket
    import threading

    # what a user meets: a fresh `vaegen tune` process (Ray reads its connection timeout as it is imported)
    silent = socket.create_server(("127.0.0.1", 0))  # listens, accepts, never answers: not Ray's GCS

    def hold_connections():
        held = []
        with contextlib.suppress(OSError):  # the server closed
            while True:
                held.append(silent.accept())

    threading.Thread(target=hold_connections, daemon=True).start()
    with socket.socket() as probe:  # a port that nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    listening = f"127.0.0.1:{silent.getsockname()[1]}"
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}})
    command = [sys.executable, "-m", "vaegen", "tune", "--config", str(config)]
    started = time.monotonic()
    with silent:
        runs = {
            "--address": subprocess.Popen([*command, "--address", closed], stderr=subprocess.PIPE, text=True,
                                          cwd=tmp_path),
            "RAY_ADDRESS": subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                            env={**os.environ, "RAY_ADDRESS": listening}),
        }
        errors = {given_as: run.communicate(timeout=300)[1] for given_as, run in runs.items()}
    assert time.monotonic() - started < 90  # seconds, not Ray's minutes of retries (both run at once)
    for (given_as, run), address, drop in zip(runs.items(), (closed, listening), ("drop", "unset")):
        assert run.returncode == 2, errors[given_as]
        paragraph = errors[given_as].split("error: ")[-1]
        assert paragraph.startswith(f"{given_as} {address}: no Ray cluster answers there (") and \
            "Failed to connect to Ray cluster" in paragraph  # Ray's own error
        assert f"{drop} {given_as} to run the sweep on this machine" in paragraph and len(paragraph.splitlines()) == 1
        assert "Traceback" not in errors[given_as]
    assert not (tmp_path / "logs").exists()  # refused before the sweep wrote anything


def test_an_address_that_is_not_host_port_is_named(tmp_path, capsys, tiny_sweep):
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}})
    assert main(["tune", "--config", str(config), "--address", "headnode"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --address headnode: ") and "Invalid address format" in err  # Ray's own words
    assert "drop --address" in err and "Traceback" not in err


def test_overrides_are_checked_like_the_space_and_nested_forms_are_accepted(tmp_path, capsys, tiny_sweep):
    from vaegen.tuning.space import load_sweep

    config = tiny_sweep(tmp_path, {"optim": {"lr": {"loguniform": [1e-4, 1e-2]}}})
    sweep = load_sweep(config, ["overrides.train.epochs=5", "tune.num_samples=7"])
    assert list(sweep.settings.space) == ["optim.lr"]
    assert sweep.base.train.epochs == 5 and sweep.settings.tune.num_samples == 7
    assert sweep.metric == "fd_efficientnet_lite0"
    assert sweep.base.data.root.is_absolute()

    assert main(["tune", "--config", str(config), "--set", "overrides.train.epochz=5"]) == 2
    assert "unknown key `train.epochz`; did you mean `epochs`?" in capsys.readouterr().err


def test_sweep_console_says_when_each_trial_starts_scores_and_ends(tmp_path, caplog):
    from types import SimpleNamespace

    import ray.cloudpickle
    from ray.exceptions import RayTaskError

    from vaegen.errors import TrainingDiverged
    from vaegen.tuning.sweep import SweepConsole

    caplog.set_level(logging.INFO, logger="vaegen.tuning.sweep")

    def trial(trial_id: str, epochs: int, error: Exception | None = None):
        pickled = None
        if error is not None:  # what Ray writes beside a trial whose function raised
            pickled = tmp_path / f"{trial_id}.pkl"
            pickled.write_bytes(ray.cloudpickle.dumps(RayTaskError("run_trial", "Traceback ...", error)))
        return SimpleNamespace(trial_id=trial_id, config={"optim.lr": 0.00123456, "train.epochs": epochs},
                               last_result={}, pickled_error_file=pickled and str(pickled), error_file=None)

    def report(console, trial, epoch, value):
        trial.last_result = {"epoch": epoch, "fd": value}  # Ray updates it after the callbacks; the end reads it
        console.on_trial_result(iteration=0, trials=[], trial=trial, result={"epoch": epoch, "fd": value})

    console = SweepConsole("fd", ["optim.lr", "train.epochs"], base_epochs=3, trials_dir=tmp_path / "trials")
    weak, strong, broken = trial("aaaa0001", 4), trial("bbbb0002", 2), trial("cccc0003", 3, TrainingDiverged(
        "the loss became NaN or infinite at epoch 1; lower optim.lr (in the sweep's `space:` or `overrides:`)."))
    console.on_trial_start(iteration=0, trials=[], trial=weak)
    console.on_trial_start(iteration=0, trials=[], trial=strong)
    report(console, weak, 1, 50.0)
    report(console, strong, 1, 60.5)
    report(console, strong, 2, 40.25)
    console.on_trial_result(iteration=0, trials=[], trial=strong, result={"epoch": 2})  # no evaluation: no line
    report(console, weak, 2, 45.0)
    console.on_trial_complete(iteration=0, trials=[], trial=weak)  # 2 of its searched 4 epochs: ASHA stopped it
    console.on_trial_complete(iteration=0, trials=[], trial=strong)  # all 2 of its epochs, though the base has 3
    console.on_trial_start(iteration=0, trials=[], trial=broken)
    console.on_trial_error(iteration=0, trials=[], trial=broken)
    # a resumed sweep's console gets the state Ray kept: the best so far still counts the trials before
    resumed = SweepConsole("fd", ["optim.lr", "train.epochs"], base_epochs=3, trials_dir=tmp_path / "trials")
    resumed.set_state(console.get_state())
    report(resumed, trial("dddd0004", 3), 1, 41.0)

    # the console's format, as the README shows it
    assert caplog.messages == [
        "trial aaaa0001 started: optim.lr=0.00123, train.epochs=4",
        "trial bbbb0002 started: optim.lr=0.00123, train.epochs=2",
        "trial aaaa0001  epoch 1/4  fd 50  best so far 50 (aaaa0001)",
        "trial bbbb0002  epoch 1/2  fd 60.5  best so far 50 (aaaa0001)",
        "trial bbbb0002  epoch 2/2  fd 40.25  best so far 40.25 (bbbb0002)",
        "trial aaaa0001  epoch 2/4  fd 45  best so far 40.25 (bbbb0002)",
        "trial aaaa0001 stopped early by ASHA: 2 of 4 epochs, best fd 45 (epoch 2)",
        "trial bbbb0002 finished: 2 of 2 epochs, best fd 40.25 (epoch 2)",
        "trial cccc0003 started: optim.lr=0.00123, train.epochs=3",
        "trial cccc0003 failed: the loss became NaN or infinite at epoch 1; lower optim.lr (in the sweep's `space:` "
        "or `overrides:`).",
        "trial dddd0004  epoch 1/3  fd 41  best so far 40.25 (bbbb0002)",
    ]


def pickled_trial_error(tmp_path: Path, trial_id: str, error: Exception, config: dict | None = None):
    """A trial as SweepConsole sees it once Ray has written the error its function raised."""
    from types import SimpleNamespace

    import ray.cloudpickle
    from ray.exceptions import RayTaskError

    pickled = tmp_path / f"{trial_id}.pkl"
    pickled.write_bytes(ray.cloudpickle.dumps(RayTaskError("run_trial", "Traceback ...", error)))
    return SimpleNamespace(trial_id=trial_id, config=config or {}, last_result={}, pickled_error_file=str(pickled),
                           error_file=None)


def test_a_failed_trials_console_line_names_the_trial_once(tmp_path, caplog, tiny_sweep):
    from vaegen.errors import ConfigError
    from vaegen.tuning.space import load_sweep, trial_config
    from vaegen.tuning.sweep import SweepConsole

    caplog.set_level(logging.INFO, logger="vaegen.tuning.sweep")
    # each value is valid beside some of the others (so the sweep starts), and this pair is not
    space = {"beta.schedule": {"choice": ["cyclic"]}, "beta.warmup": {"int": [1, 30]}, "beta.cycle": {"int": [10, 40]}}
    sweep = load_sweep(tiny_sweep(tmp_path, space))
    with pytest.raises(ConfigError) as rejected:  # what run_trial raises in the trial's process
        trial_config(sweep, {"beta.schedule": "cyclic", "beta.warmup": 30, "beta.cycle": 10}, "cccc0003")
    console = SweepConsole("fd", list(space), base_epochs=2)
    console.on_trial_error(iteration=0, trials=[], trial=pickled_trial_error(tmp_path, "cccc0003", rejected.value))

    (line,) = caplog.messages
    assert line.startswith("trial cccc0003 failed: its config has 1 problem") and line.count("cccc0003") == 1
    assert "beta.warmup (30)" in line and "beta.cycle (10)" in line and "\n" not in line


def test_ended_trials_leave_no_half_written_files(tmp_path):
    from types import SimpleNamespace

    from vaegen.tuning.sweep import SweepConsole

    trials = tmp_path / "trials"
    terms = ("loss", "nelbo", "recon", "kl")
    rows = [{"epoch": epoch, "beta": 1.0, "fd": 90.0 / epoch, **{f"{split}_{term}": 3.0 / epoch for term in terms
                                                                for split in ("train", "val")}} for epoch in (1, 2)]
    # ASHA stopped it: Ray ended its process while train()'s `finally` drew the curves, after its evaluation's drawing
    stopped = trials / "aaaa0001"
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (stopped / "curves.png").write_bytes(b"an earlier drawing")
    (stopped / ".curves.png.k2j4x9_q.tmp").touch()
    (stopped / "checkpoints" / ".last.pt.0b1c2d3e.tmp").touch()
    # interrupted before anything drew its curves; a trial that never started has no folder at all
    unplotted = trials / "bbbb0002"
    unplotted.mkdir()
    (unplotted / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (unplotted / ".curves.png.abcdefgh.tmp").touch()
    console = SweepConsole("fd", ["optim.lr"], base_epochs=2, trials_dir=trials)
    ended = [SimpleNamespace(trial_id=name) for name in ("aaaa0001", "bbbb0002", "cccc0003")]

    console.on_experiment_end(trials=ended)  # Ray calls it once every trial's process has ended

    assert sorted(path.name for path in trials.rglob("*.tmp")) == []
    for run in (stopped, unplotted):  # drawn again from metrics.jsonl, as train() would have
        with Image.open(run / "curves.png") as curves:
            assert curves.format == "PNG" and curves.size[0] > 400
    assert not (trials / "cccc0003").exists()


def test_sweep_yaml_leaves_out_nulls_and_reads_back_as_the_sweep_it_started(tmp_path, recwarn, tuner_never_runs, tiny_sweep):
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "model.widths": {"choice": [[8, 16], [16]]},
                                   "model.latent_dim": {"int": [4, 8]}},
                        points_to_evaluate=[{"optim.lr": 2e-3, "model.widths": [8, 16], "model.latent_dim": 8}])
    with pytest.raises(RayStarted):  # sweep.yaml is written before the tuner runs
        main(["tune", "--config", str(config), "--set", "overrides.train.epochs=2"])
    record = tmp_path / "logs" / "tiny" / "sweep.yaml"
    written = record.read_text()
    assert "null" not in written and "storage" not in written  # no distribution's unused kinds, no unset storage
    assert "grace_period: 1\n" in written and "scheduler: asha\n" in written  # defaults are stated: what ran
    from vaegen.tuning.space import load_sweep
    from vaegen.tuning.sweep import read_sweep_record, sweep_record

    started = load_sweep(config, ["overrides.train.epochs=2"]).settings
    assert read_sweep_record(record) == started

    # --resume reads it back: the same sweep file says nothing, a changed one is warned about
    tuner_never_runs.exists = True
    with pytest.raises(RayStarted):
        main(["tune", "--config", str(config), "--set", "overrides.train.epochs=2", "--resume"])
    assert not [warning for warning in recwarn if "changed since this sweep started" in str(warning.message)]
    with pytest.warns(UserWarning, match=r"--set values\) changed since this sweep started"), pytest.raises(RayStarted):
        main(["tune", "--config", str(config), "--set", "overrides.train.epochs=3", "--resume"])
    assert record.read_text() == written  # the record stays the sweep as it started

    # a null set on purpose (an override, a choice) is a value, not an unset field: it stays and reads back
    with_nulls = load_sweep(tiny_sweep(tmp_path / "nulls", {"optim.grad_clip": {"choice": [None, 1.0]}}),
                            ["overrides.optim.grad_clip=null"]).settings
    record.write_text(sweep_record(with_nulls))
    assert read_sweep_record(record) == with_nulls and with_nulls.overrides == {"optim.grad_clip": None}


def test_a_sweep_starts_its_own_ray_unless_an_address_is_given(tmp_path, monkeypatch, tiny_sweep):
    import ray

    def init(**kwargs):
        raise RayStarted(kwargs.get("address"))

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}})

    # without an address, not whatever cluster `ray start` left running on this machine (ray.init()'s choice)
    with pytest.raises(RayStarted) as started:
        main(["tune", "--config", str(config)])
    assert started.value.args == ("local",)

    # RAY_ADDRESS is taken as --address is; --address, given too, wins
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with pytest.raises(RayStarted) as started:
        main(["tune", "--config", str(config)])
    assert started.value.args == ("127.0.0.1:6379",)
    with pytest.raises(RayStarted) as started:
        main(["tune", "--config", str(config), "--address", "127.0.0.1:6380"])
    assert started.value.args == ("127.0.0.1:6380",)


def test_list_choices_travel_through_optuna_as_text(tmp_path):
    from vaegen.tuning.space import Distribution, from_sampled, to_domain

    widths = Distribution(choice=[[8, 16], [16, 32]])
    assert to_domain(widths).categories == ["[8, 16]", "[16, 32]"]
    assert from_sampled("[16, 32]", widths) == [16, 32]
    assert from_sampled(31.0, Distribution(int=(16, 64))) == 31
    assert to_domain(Distribution(int=(16, 64))).upper == 65  # the YAML's high end is included


def test_sweep_joins_a_running_cluster_with_address(tmp_path, tiny_sweep):
    import socket

    ray_cli = Path(sys.executable).with_name("ray")
    with socket.socket() as probe:  # a free port for the head node
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = subprocess.run([str(ray_cli), "start", "--head", "--num-cpus", "2", "--port", str(port),
                              "--include-dashboard", "false"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        config = tiny_sweep(tmp_path, {"optim.lr": {"loguniform": [1e-4, 1e-2]}}, num_samples=1, scheduler="fifo")
        assert main(["tune", "--config", str(config), "--address", f"127.0.0.1:{port}"]) == 0
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)
    (row,) = read_summary(tmp_path)
    assert row["status"] == "finished" and float(row["best_fd_efficientnet_lite0"]) > 0
    assert (tmp_path / "best" / "tiny-best" / "model.safetensors").is_file()
