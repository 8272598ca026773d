"""Two runs aimed at one folder: the second never writes into the first one's, whether named or auto-named."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import yaml
from fault_helpers import cli_error

from vaegen.apps.cli import main, resolve_run


def start_train(config, go: Path, *extra: str) -> subprocess.Popen:
    """`vaegen train` in a new process that imports everything first and waits for `go` to exist: runs started
    together reach their run folders within milliseconds of each other, whatever their import times."""
    script = (
        "import sys, time, pathlib\nimport vaegen.apps.cli, vaegen.training.loop\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
        "sys.exit(vaegen.apps.cli.main(sys.argv[1:]))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, "train", "--config", str(config), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_runs_with_the_same_name_started_together_leave_one_run(tmp_path, tiny_config):
    config, go = tiny_config(tmp_path, train={"epochs": 3}), tmp_path / "go"
    first, second = start_train(config, go, "--set", "optim.lr=1e-3"), start_train(config, go, "--set", "optim.lr=3e-4")
    go.touch()
    results = [(process.wait(timeout=300), *process.communicate()) for process in (first, second)]

    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, _, err in results]
    loser = next(err for code, _, err in results if code == 2)
    assert "tiny" in cli_error(loser)  # "is in use" while the winner trains, "already holds a run" once it is done
    rows = [json.loads(line) for line in (tmp_path / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert len({row["lr"] for row in rows}) == 1  # every epoch from the one run that owns the folder
    best = json.loads((tmp_path / "best" / "tiny" / "metrics.json").read_text())
    assert best["metrics"]["lr"] == rows[0]["lr"]


@contextlib.contextmanager
def held_by_another_process(lock: Path):
    """Another process holds the run's lock, as a training run does from its start to its end."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from filelock import FileLock; held = FileLock({str(lock)!r}); held.acquire(); print('held', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate("\n", timeout=30)


def test_a_run_folder_held_by_another_process_is_refused(tmp_path, capsys, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 1})
    run = tmp_path / "logs" / "tiny"
    lock = run / ".lock"
    run.mkdir(parents=True)
    with held_by_another_process(lock):
        assert main(["train", "--config", str(config)]) == 2
        assert "is in use" in cli_error(capsys.readouterr().err)
        assert [path.name for path in run.iterdir()] == [".lock"]  # refused before anything was written
    assert main(["train", "--config", str(config)]) == 0  # the lock goes with its process
    last = (run / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    with held_by_another_process(lock):
        assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 2
        assert "is in use" in cli_error(capsys.readouterr().err)
    assert (run / "checkpoints" / "last.pt").read_bytes() == last


def test_auto_named_runs_started_in_the_same_second_get_different_folders(tmp_path, monkeypatch, tiny_config):
    config = tiny_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["output"].pop("run_name")
    config.write_text(yaml.safe_dump(raw))

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 4, 12, 0, 0)

    monkeypatch.setattr("vaegen.training.runs.datetime", FrozenClock)
    args = SimpleNamespace(config=config, overrides=[], resume=None)
    names = [resolve_run(args)[1].name for _ in range(3)]  # nothing trained yet: no checkpoint marks a name as taken
    assert names == ["tiny-20261204-120000", "tiny-20261204-120000-2", "tiny-20261204-120000-3"]
