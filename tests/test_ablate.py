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


def test_a_table_at_another_size_gets_a_section_of_its_own_and_the_32_px_table_stays(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    import ablate

    (tmp_path / "docs").mkdir()
    results = tmp_path / "docs" / "results.md"
    results.write_text("intro\n<!-- ablation:start -->\nsmall table\n<!-- ablation:end -->\noutro\n")
    monkeypatch.setattr(ablate, "REPO", tmp_path)
    ablate.write_section(*ablate.section_markers("ablation", 96), "large table")
    ablate.write_section(*ablate.section_markers("ablation:apples", 96), "apples large table")
    text = results.read_text()
    assert "small table" in text and text.index("outro") < text.index("<!-- ablation:96px:start -->\nlarge table")
    assert "<!-- ablation:apples:96px:start -->\napples large table\n<!-- ablation:apples:96px:end -->" in text
    ablate.write_section(*ablate.section_markers("ablation", 32), "redone small table")
    assert "small table\n" not in results.read_text().replace("redone small table", "") and "large table" in results.read_text()
