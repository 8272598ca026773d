"""The CLI as a user meets it: real processes, exit codes, one-paragraph errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaegen.apps.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaegen", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_unknown_key_exits_2_with_suggestion_and_no_traceback(tmp_path):
    path = write(tmp_path, {"data": {"root": "x"}, "model": {"latnt_dim": 64}})
    result = run("train", "--config", str(path))
    assert result.returncode == 2
    assert "error:" in result.stderr and "`model.latnt_dim`" in result.stderr
    assert "did you mean `latent_dim`" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    path = write(tmp_path, {"data": {"root": "x"}, "model": {"latnt_dim": 64}})
    result = run("--debug", "train", "--config", str(path))
    assert result.returncode == 2  # the same exit code as without --debug
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "did you mean `latent_dim`?" in result.stderr


def test_bad_set_override_exits_2(tmp_path):
    path = write(tmp_path, {"data": {"root": "x"}})
    result = run("train", "--config", str(path), "--set", "train.epochs=zero")
    assert result.returncode == 2
    assert "`train.epochs` = 'zero'" in result.stderr


def test_config_mistakes_read_as_one_paragraph_that_says_what_to_write(tmp_path):
    path = tmp_path / "c.yaml"  # `train:` with nothing under it means train's defaults, and is no problem
    path.write_text(f"data:\n  root: {REPO / 'data' / 'apples_sample'}\nmodel:\n  name: yes\ntrain:\n")
    result = run("train", "--config", str(path), "--set", "data.image_size=[64, 64, 3]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = result.stderr.strip().splitlines()  # one paragraph naming both problems, each with what to write
    assert error.startswith(f"error: {path}") and "2 problems" in error
    assert "`data.image_size` = [64, 64, 3]" in error and "[height, width]" in error and "data.channels" in error
    assert "`model.name`" in error and "yes/no" in error and "conv_vae" in error


def test_missing_data_root_exits_2(tmp_path):
    path = write(tmp_path, {"data": {"root": str(tmp_path / "nowhere"), "cache_dir": str(tmp_path / "cache")},
                            "output": {"logs_dir": str(tmp_path / "logs"), "best_dir": str(tmp_path / "best")}})
    result = run("train", "--config", str(path))
    assert result.returncode == 2
    assert f"data.root {tmp_path / 'nowhere'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "logs").iterdir()) == []  # no empty run folder left behind for each typo


def test_config_command_prints_effective_config():
    result = run("config", "--config", str(REPO / "configs" / "train_apples.yaml"), "--set", "train.epochs=7")
    assert result.returncode == 0
    effective = yaml.safe_load(result.stdout)
    assert effective["train"]["epochs"] == 7
    assert effective["data"]["image_size"] == [96, 96]
    assert effective["beta"] == {"schedule": "cyclic", "max": 4.0, "warmup": 10, "cycle": 20}
    assert effective["optim"]["lr"] == pytest.approx(2e-4)


def test_config_command_notes_a_data_root_that_is_not_there(tmp_path):
    """Valid as a config, but training would stop at once: said before training finds out."""
    missing = run("config", "--config", str(REPO / "configs" / "train_apples.yaml"), "--set", f"data.root={tmp_path / 'nowhere'}")
    assert missing.returncode == 0 and f"note: data.root {tmp_path / 'nowhere'} does not exist here yet" in missing.stderr
    present = run("config", "--config", str(REPO / "configs" / "quickstart.yaml"), "--set", f"data.root={tmp_path}")
    assert present.returncode == 0 and "note:" not in present.stderr


@pytest.mark.parametrize("overrides, named", [
    (["model.name=conv_ae"], "sampler.name"),  # an autoencoder has no prior to sample
    (["model.name=realnvp", "sampler.name=gmm"], "sampler.name"),
    (["model.name=dcgan", "output.select=val_nelbo"], "output.select"),
    (["model.name=hvae", "model.levels=2", "model.level_temperatures=[1,1,1]"], "model.level_temperatures"),
    (["model.widths=[8,16,32,64,128,256]"], "data.image_size"),  # 96 px does not halve 6 times
])
def test_config_command_refuses_what_training_refuses(overrides, named, capsys):
    """`vaegen config` runs the model family's rules as `vaegen train` does: exit 2, the same key path named."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["config", "--config", str(REPO / "configs" / "train_apples.yaml"), *sets]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["quickstart", "train_apples", "train_apples_cvae", "train_impressionism"])
def test_shipped_configs_are_valid(name, capsys):
    assert main(["config", "--config", str(REPO / "configs" / f"{name}.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    if name == "train_apples_cvae":
        assert printed["model"]["conditional"] == "onehot"
    if name == "train_impressionism":
        assert printed["data"]["image_size"] == [128, 128] and printed["optim"]["lr"] == pytest.approx(5e-4)
        assert printed["beta"]["max"] == 0.5


def test_resume_without_a_run_exits_2(tmp_path, capsys):
    path = write(tmp_path, {"data": {"root": "x"}, "output": {"logs_dir": str(tmp_path / "logs")}})
    assert main(["train", "--config", str(path), "--resume"]) == 2
    assert "found no run of 'c'" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "logs" / "missing")]) == 2
    assert "has no checkpoints/last.pt" in capsys.readouterr().err


def test_resume_of_a_run_without_its_config_says_where_the_copy_is(tmp_path, capsys):
    run_dir = tmp_path / "logs" / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "has a checkpoint but no config.yaml" in err and f"Copy {run_dir / 'checkpoints' / 'config.yaml'}" in err
    assert "--config" not in err  # the old advice (pass --config) is ignored when resuming


@pytest.mark.parametrize("stop_in_epoch", [1, 3])
def test_ctrl_c_names_the_run_to_resume_and_its_epoch(tmp_path, monkeypatch, capsys, stop_in_epoch, tiny_config):
    import vaegen.training.loop

    real_epoch = vaegen.training.loop.train_one_epoch

    def epoch(run, data, beta, number):
        if number == stop_in_epoch:
            raise KeyboardInterrupt
        return real_epoch(run, data, beta, number)

    monkeypatch.setattr(vaegen.training.loop, "train_one_epoch", epoch)
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 4}))]) == 130
    err = capsys.readouterr().err
    run = tmp_path / "logs" / "tiny"
    assert "interrupted" in err and str(run) in err
    if stop_in_epoch == 1:
        assert "was saved yet" in err and "--resume" not in err
    else:
        assert f"vaegen train --resume {run}" in err and "after epoch 2" in err
    assert (run / "train.log").read_text().splitlines()[-1] == err.strip().splitlines()[-1]  # the log keeps it too


def test_ctrl_c_outside_training_offers_no_resume(monkeypatch, capsys):
    import vaegen.apps.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(vaegen.apps.cli.COMMANDS, "config", interrupted)
    assert main(["config", "--config", "x.yaml"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err and "Traceback" not in err


def test_resume_by_config_says_which_newer_run_had_nothing_to_resume(tmp_path, capsys, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 1}, output={"run_name": None})
    assert main(["train", "--config", str(config)]) == 0
    logs = tmp_path / "logs"
    (finished,) = logs.iterdir()
    empty = logs / "tiny-20991231-235959"  # a later run stopped before its first checkpoint
    empty.mkdir()
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--resume", "--set", "train.epochs=2"]) == 0
    (note,) = [line for line in capsys.readouterr().err.splitlines() if "resuming" in line]
    assert note.startswith("note:") and f"resuming {finished}" in note
    assert empty.name in note and "no checkpoint" in note


def test_train_without_config_exits_2(capsys):
    assert main(["train"]) == 2
    assert "needs --config" in capsys.readouterr().err


def test_data_command_reports_missing_source(tmp_path):
    result = run("data", "fruit360", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Training/" in result.stderr


def test_version_and_console_script():
    result = subprocess.run([Path(sys.executable).parent / "vaegen", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("vaegen ")


def test_resume_with_nothing_left_to_do_says_so_before_any_setup(tmp_path, capsys, tiny_config):
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 1}))]) == 0
    capsys.readouterr()
    run = tmp_path / "logs" / "tiny"
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and str(run) in out and "train.epochs=1" in out and "--set train.epochs=N" in out
    assert "data:" not in out  # the data, the model and the evaluation were not set up for nothing
