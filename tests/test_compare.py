"""`vaegen compare`: run, model and sweep folders into one table, protocol flags, curves, sample grids, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from helpers import CountingBackbone
from PIL import Image

import vaegen.evaluation.backbones
from vaegen.apps import gallery
from vaegen.apps.cli import main
from vaegen.errors import CompareError, ProtocolMismatch
from vaegen.evaluation import compare

EVAL = {"every": 1, "backbone": "efficientnet-lite0", "num_samples": 40, "batch_size": 20, "kid_subset_size": 20}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_config) -> Path:
    """Two tiny runs scored by FD (the test backbone: no download), `slow` (lr 1e-3) and `fast` (lr 3e-3), each in
    <root>/<name>/logs/<name> with its best model in <root>/<name>/best/<name>."""
    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vaegen.evaluation.backbones, "load_backbone", lambda name, device="cpu", weights=None: CountingBackbone())
        patch.setattr(vaegen.evaluation.backbones, "resolve_backbone_name", lambda name, weights=None: "efficientnet-lite0")
        for name, lr in [("slow", 1e-3), ("fast", 3e-3)]:
            config = tiny_config(root / name, train={"epochs": 2}, optim={"lr": lr}, eval=EVAL,
                                 output={"select": "fid", "run_name": name})
            assert main(["train", "--config", str(config)]) == 0
    return root


def run_dir(root: Path, name: str) -> Path:
    return root / name / "logs" / name


def model_dir(root: Path, name: str) -> Path:
    return root / name / "best" / name


def exported(model: Path) -> dict:
    return json.loads((model / "metrics.json").read_text())


def csv_rows(out: Path) -> dict[str, dict]:
    with (out / "compare.csv").open() as handle:
        return {row["run"]: row for row in csv.DictReader(handle)}


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def copy_model(root: Path, name: str, to: Path, **protocol) -> Path:
    """A copy of run `name`'s best model whose metrics.json still names the run, its protocol fields set to `protocol`."""
    shutil.copytree(model_dir(root, name), to)
    metrics = exported(to)
    metrics["protocol"].update(protocol)
    (to / "metrics.json").write_text(json.dumps(metrics))
    return to


def fabricated_sweep(root: Path, folder: Path) -> Path:
    """folder/ laid out as `vaegen tune` writes a sweep: trials/<trial>/ run folders, each with its best model in best/
    (whose metrics.json names the trial's folder) and its searched values in params.json."""
    for trial, name in [("trial_a", "slow"), ("trial_b", "fast")]:
        trial_dir = folder / "trials" / trial
        shutil.copytree(run_dir(root, name), trial_dir)
        shutil.copytree(model_dir(root, name), trial_dir / "best")
        metrics = exported(trial_dir / "best") | {"run_dir": str(trial_dir)}
        (trial_dir / "best" / "metrics.json").write_text(json.dumps(metrics))
        (trial_dir / "params.json").write_text(json.dumps({"optim.lr": 1e-3 if name == "slow" else 3e-3}))
    (folder / "sweep.yaml").write_text("name: sweep\n")
    return folder


def test_compare_writes_one_table_of_every_metric_the_curves_and_the_samples(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", str(run_dir(runs, "slow")), str(model_dir(runs, "fast")), "--out", str(out)]) == 0
    for name in ["compare.md", "compare.csv", "curves_loss.png", "curves_fd.png", "curves_kd.png", "samples.png"]:
        assert (out / name).is_file(), name
        if name.endswith(".png"):
            assert png_size(out / name)
    table = csv_rows(out)
    assert list(table) == ["slow", "fast"]
    for name in ["slow", "fast"]:
        metrics = exported(model_dir(runs, name))
        assert table[name]["best_epoch"] == str(metrics["epoch"]) and table[name]["protocol"] == "A"
        assert float(table[name]["wall_s"]) > 0  # metrics.jsonl's wall_s of the last epoch
        for key, value in metrics["metrics"].items():  # every metric, as metrics.json has it
            assert float(table[name][key]) == pytest.approx(value, rel=1e-12), (name, key)
    markdown = (out / "compare.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| run |"))
    assert "| fd_efficientnet_lite0 |" in header and "| val_nelbo |" in header and "| protocol |" in header
    fd = exported(model_dir(runs, "fast"))["metrics"]["fd_efficientnet_lite0"]
    assert f"| {compare.cell(fd)} |" in next(line for line in markdown.splitlines() if line.startswith("| fast |"))
    assert "⚠" not in markdown and "Protocol A: efficientnet-lite0 features (8-d), 40 generated" in markdown
    assert "![losses](curves_loss.png)" in markdown and "![samples](samples.png)" in markdown
    assert png_size(out / "curves_loss.png")[0] == 1000  # two columns of panels: epoch and wall time
    printed = capsys.readouterr().out
    assert "fd_efficientnet_lite0" in printed and f"to {out}/" in printed


def test_a_run_and_its_best_model_are_one_run(runs):
    with pytest.raises(CompareError, match="at least two runs"):
        compare.compare([run_dir(runs, "slow"), model_dir(runs, "slow")])
    (entry,) = [compare.read_entry(source) for source in [compare.model_source(model_dir(runs, "slow"))]]
    assert entry.source.run_dir == run_dir(runs, "slow") and entry.rows  # linked through metrics.json's run_dir


def test_metric_selects_the_columns_by_pattern(runs, tmp_path):
    paths = [run_dir(runs, "slow"), run_dir(runs, "fast")]
    comparison = compare.compare(paths, ["fd_*", "val_nelbo"])
    assert comparison.keys == ["val_nelbo", "fd_efficientnet_lite0"]  # in the runs' order
    with pytest.raises(CompareError, match="no_such_metric"):
        compare.compare(paths, ["no_such_metric"])
    assert main(["compare", *map(str, paths), "--metric", "no_such_metric", "--out", str(tmp_path / "out")]) == 2


def test_a_protocol_that_differs_is_flagged_and_refused_with_strict(runs, tmp_path, capsys):
    other = copy_model(runs, "fast", tmp_path / "fast-80", num_generated=80)
    out = tmp_path / "out"
    assert main(["compare", str(model_dir(runs, "slow")), str(other), "--out", str(out)]) == 0
    markdown = (out / "compare.md").read_text()
    assert "B ⚠ differs" in next(line for line in markdown.splitlines() if line.startswith("| fast"))
    assert "num_generated (40 vs 80)" in markdown and "Protocol B:" in markdown
    capsys.readouterr()
    assert main(["compare", str(model_dir(runs, "slow")), str(other), "--strict", "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert "num_generated" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "strict").exists()  # refused before anything is written
    with pytest.raises(ProtocolMismatch):
        compare.refuse_mismatch(compare.compare([model_dir(runs, "slow"), other]).entries)


def test_precision_recall_with_another_k_are_flagged_but_fd_still_compares(runs, tmp_path, capsys):
    other = copy_model(runs, "fast", tmp_path / "fast-k3", nearest_k=3)
    comparison = compare.compare([model_dir(runs, "slow"), other])
    header, rows = compare.table(comparison)
    assert [row[header.index("protocol")] for row in rows] == ["A", "A"]  # FD/KID: one protocol
    flagged = [note for note in compare.protocol_notes(comparison.entries) if "precision/recall" in note]
    assert len(flagged) == 1 and "nearest_k 3" in flagged[0] and "slow used nearest_k" in flagged[0]
    assert main(["compare", str(model_dir(runs, "slow")), str(other), "--strict", "--out", str(tmp_path / "strict")]) == 2
    assert "nearest_k" in capsys.readouterr().err


def test_library_versions_do_not_make_protocols_differ(runs, tmp_path):
    other = copy_model(runs, "fast", tmp_path / "fast-newer", libraries={"torch": "9.9"}, backbone_precision="bf16")
    comparison = compare.compare([model_dir(runs, "slow"), other])
    compare.refuse_mismatch(comparison.entries)  # passes
    header, rows = compare.table(comparison)
    assert [row[header.index("protocol")] for row in rows] == ["A", "A"]


def test_protocol_fields_and_runs_without_one():
    base = {"backbone": "inception", "feature_dim": 2048, "num_generated": 10000, "num_real": 5000, "reference": "train",
            "image_size": [64, 64], "resize": "bilinear", "sampler": "prior", "temperature": 1.0, "libraries": {"torch": "2"}}
    assert compare.differences(base, {**base, "libraries": {}}) == []
    assert compare.differences(base, {**base, "image_size": [32, 32], "num_real": 4000}) == ["num_real", "image_size"]
    assert compare.differences(base, {**base, "sampler": "gmm", "temperature": 0.8}) == []  # the models' side, compared
    assert compare.differences(base, {key: value for key, value in base.items() if key != "resize"}) == ["resize"]

    def entry(name: str, protocol: dict | None, metrics: dict) -> compare.Entry:
        return compare.Entry(name, compare.Source(name, None, None), "conv_vae (VAE)", 1, None, metrics, protocol, [], None)

    entries = [entry("a", base, {"fid_inception": 1.0}), entry("b", None, {"val_nelbo": 2.0}),
               entry("c", None, {"fid_inception": 3.0}), entry("d", {**base, "num_generated": 500}, {"fid_inception": 4.0})]
    _, group_of = compare.protocol_groups(entries)
    assert [compare.protocol_marker(e, group_of) for e in entries] == ["A", "none (eval off)", "unknown", "B ⚠ differs"]
    notes = compare.protocol_notes(entries)
    assert any("d were measured under protocol B" in note and "num_generated (10000 vs 500)" in note for note in notes)
    with pytest.raises(ProtocolMismatch):
        compare.refuse_mismatch(entries[:3])  # c's distances have no protocol to check
    # one protocol, two samplers: the note says how each run drew its samples, not only its group's first run
    mixed = [entry("a", base, {"fid_inception": 1.0}), entry("e", {**base, "sampler": "gmm", "temperature": 0.8}, {"fid_inception": 2.0})]
    [note] = compare.protocol_notes(mixed)
    assert note.startswith("Protocol A: inception features") and "prior sampler, T=1.0 (a)" in note and "gmm sampler, T=0.8 (e)" in note


def test_a_sweep_folder_stands_for_its_trials(runs, tmp_path):
    sweep = fabricated_sweep(runs, tmp_path / "logs" / "sweep")
    out = tmp_path / "out"
    assert main(["compare", str(sweep), "--out", str(out)]) == 0
    table = csv_rows(out)
    assert list(table) == ["trial_a", "trial_b"]
    for trial, name in [("trial_a", "slow"), ("trial_b", "fast")]:  # each trial's own best model, through best/
        expected = exported(model_dir(runs, name))["metrics"]["fd_efficientnet_lite0"]
        assert float(table[trial]["fd_efficientnet_lite0"]) == pytest.approx(expected, rel=1e-12)
    assert "| optim.lr=0.001 |" in (out / "compare.md").read_text()  # the searched values
    three = compare.compare([sweep, run_dir(runs, "slow")])
    assert [entry.name for entry in three.entries][:2] == ["trial_a", "trial_b"] and len(three.entries) == 3


def test_default_output_folder_names_the_runs(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(run_dir(runs, "slow")), str(model_dir(runs, "fast"))]) == 0
    assert (tmp_path / "comparisons" / "slow-vs-fast" / "compare.md").is_file()
    long = [Path(f"/x/{'a' * 60}{index}") for index in range(3)]
    name = compare.default_out_dir(long).name
    assert len(name) <= compare.NAME_ROOM and name.endswith("-and-1-more")


@pytest.mark.parametrize("case", ["missing", "file", "folder of runs", "empty folder", "one run", "bad metrics"])
def test_bad_input_is_one_paragraph_and_exit_2(runs, tmp_path, capsys, case):
    folder = tmp_path / "x"
    if case == "file":
        folder.write_text("not a folder")
    elif case == "folder of runs":
        shutil.copytree(runs / "slow" / "logs", folder)
    elif case == "empty folder":
        folder.mkdir()
    elif case == "bad metrics":
        shutil.copytree(model_dir(runs, "fast"), folder)
        (folder / "metrics.json").write_text("{not json")
    paths = [run_dir(runs, "slow")] + ([] if case == "one run" else [folder])
    with pytest.raises(CompareError):
        compare.compare(paths)
    capsys.readouterr()
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if case == "folder of runs":
        assert str(folder / "slow") in err  # names the runs it holds


def test_the_gallery_compare_view_shows_what_compare_writes(runs):
    view = gallery.compare_view(runs, ["slow/best/slow", "fast/best/fast"])
    comparison = compare.compare([model_dir(runs, "slow"), model_dir(runs, "fast")])
    assert (view.header, view.rows) == compare.table(comparison)
    assert view.notes == compare.protocol_notes(comparison.entries)
    captions = [caption for caption, _ in view.pictures]
    assert [caption.split(" against")[0] for caption in captions[:3]] == ["losses", "Fréchet distances", "kernel distances"]
    assert captions[-1] == "each model's best samples"
    with pytest.raises(CompareError):
        gallery.compare_view(runs, ["slow/best/slow"])
