"""scripts/ablate.py end to end on the bundled sample: trains a row, fits the post-hoc mixture row, prints the table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_two_row_ablation_prints_its_table_and_the_mixture_row_reuses_the_trained_model(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ablate.py"), "--data", str(REPO / "data" / "apples_sample"), "--size", "16",
         "--epochs", "1", "--num-samples", "40", "--rows", "reference,+gmm", "--out", str(tmp_path), "--no-record"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {m[0]: m[1:] for m in re.findall(r"^\| (reference|\+gmm) \| ([\d.]+).*?\| [\d.]+ \| ([\d.]+|-) \|", out.stdout, re.M)}
    assert rows.keys() == {"reference", "+gmm"}
    # the mixture row scores the reference row's own checkpoint: its prior score is the reference's score
    assert rows["reference"][1] == "-" and rows["+gmm"][1] == rows["reference"][0]
    assert "(fitted after training on the reference row's checkpoint)" in out.stdout
    assert "The whole invocation (every row, its evaluation and copy ratio) took" in out.stdout
    assert (tmp_path / "reference.json").is_file() and (tmp_path / "gmm.json").is_file()
    assert not (tmp_path / "logs" / "gmm").exists()  # nothing trained for the mixture row
