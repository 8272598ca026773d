"""scripts/families.py end to end on the bundled sample: the yardstick row, a budget run (one probing epoch, resumed to
the epochs its measured speed fits), a resampled diffusion row, the tables, and a second invocation that reuses it all."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def families(tmp_path: Path, rows: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "scripts" / "families.py"), "--data", str(REPO / "data" / "apples_sample"),
               "--size", "16", "--epochs", "2", "--num-samples", "20", "--rows", rows, "--out", str(tmp_path), "--no-record", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_the_budget_run_trains_the_epochs_its_speed_fits_and_a_rerun_reuses_every_row(tmp_path):
    done = families(tmp_path, "DCGAN,DDPM (DDIM 50 steps),DDPM (DDIM 10 steps)", "--skip", "epochs")
    assert done.returncode == 0, done.stderr[-3000:]
    budget = json.loads((tmp_path / "best-VAE-recipe-epochs.json").read_text())["train_seconds"]
    for slug in ("DCGAN-budget", "DDPM-DDIM-50-steps-budget"):
        row = json.loads((tmp_path / f"{slug}.json").read_text())
        per_epoch = row["train_seconds"] / row["epochs"]
        assert row["epochs"] == max(2, int(budget // first_epoch_seconds(tmp_path / "logs" / slug)))
        assert row["epochs"] >= 2 and per_epoch > 0
        logged = [json.loads(line)["epoch"] for line in (tmp_path / "logs" / slug / "metrics.jsonl").read_text().splitlines()]
        assert logged == list(range(1, row["epochs"] + 1))  # the probe's epoch, then the resumed ones
    resampled = json.loads((tmp_path / "DDPM-DDIM-10-steps-budget.json").read_text())
    assert resampled["sample_seconds"] < json.loads((tmp_path / "DDPM-DDIM-50-steps-budget.json").read_text())["sample_seconds"]
    budget_table, epochs_table = done.stdout.split("### At equal training time", 1)[1].split("### At 2 epochs", 1)
    shown = lambda table: set(re.findall(r"^\| ([^|]+?) \| \d+ \|", table, re.M))  # noqa: E731
    assert shown(budget_table) == {"best VAE recipe", "DCGAN", "DDPM (DDIM 50 steps)", "DDPM (DDIM 10 steps)"}
    # the 2-epoch table was skipped: it holds the rows whose budget was 2 epochs (the same runs), the rest are pending
    two = {"DCGAN"} if json.loads((tmp_path / "DCGAN-budget.json").read_text())["epochs"] == 2 else set()
    if json.loads((tmp_path / "DDPM-DDIM-50-steps-budget.json").read_text())["epochs"] == 2:
        two |= {"DDPM (DDIM 50 steps)", "DDPM (DDIM 10 steps)"}
    assert shown(epochs_table) == {"best VAE recipe", *two}
    pending = [name for name in ("DCGAN", "DDPM (DDIM 50 steps)", "DDPM (DDIM 10 steps)") if name not in two]
    assert (f"Not measured yet: {', '.join(pending)}." in epochs_table) == bool(pending)

    again = families(tmp_path, "DCGAN", "--skip", "epochs")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "DCGAN (budget): reusing" in again.stdout and "\n=== DCGAN (budget)\n" not in again.stdout


def first_epoch_seconds(run_dir: Path) -> float:
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    return 270 / first["images_per_s"]  # the sample's 270 training images
