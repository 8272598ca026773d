"""`vaegen compare`: several runs side by side. Each argument is a run folder (logs/<run>), a model folder
(best_models/<run>) or a sweep folder (logs/<sweep>, its trials); each becomes an `Entry` (the best epoch's metrics,
its curves, its samples, its FD/KID protocol), and a `Comparison` of them gives one table of every metric, with the
runs whose protocols differ flagged, overlaid curves and the sample grids in one picture. The gallery's compare view
draws the same things from these functions."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image

from vaegen.checkpoint import atomic_write, make_output_folder, read_json_object, write_text_atomic
from vaegen.errors import CompareError, ProtocolMismatch
from vaegen.evaluation.frechet import protocol_text, sampling_text
from vaegen.plots import overlaid_curves, side_by_side

# The protocol fields that make two FD/KID numbers comparable; library versions and precision are left out on purpose,
# and so are the sampler and its temperature: how a model draws its samples is what a comparison compares.
PROTOCOL_FIELDS = ("backbone", "feature_dim", "num_generated", "num_real", "reference", "image_size", "resize")
# settings that only some metrics depend on: {protocol field: those metrics}; FD/KID compare whatever they are
METRIC_SETTINGS = {"nearest_k": "precision/recall/density/coverage", "is_splits": "the Inception Score"}
MISSING = "—"
KINDS = "a run folder (logs/<run>), a model folder (best_models/<run>) or a sweep folder (logs/<sweep>)"
# The curve files: name -> (title, whether a metrics.jsonl key belongs to it); the keys themselves come from the rows.
RECONSTRUCTION_SCORES = ("val_ssim", "val_ms_ssim", "val_psnr")
CURVE_GROUPS = {
    "loss": ("losses", lambda key: key in ("train_loss", "val_loss") or (key.startswith("val_") and key not in RECONSTRUCTION_SCORES)),
    "fd": ("Fréchet distances", lambda key: key.startswith(("fid_", "fd_")) and not key.endswith("_std")),
    "kd": ("kernel distances", lambda key: key.startswith(("kid_", "kd_")) and not key.endswith("_std")),
    "fidelity": ("precision, recall, density, coverage", lambda key: key.startswith(("precision_", "recall_", "density_", "coverage_"))),
    "reconstruction": ("reconstruction SSIM and PSNR", lambda key: key in RECONSTRUCTION_SCORES),
}
NAME_ROOM = 100  # characters of the default output folder's name


# Reading the folders
@dataclass(frozen=True)
class Source:
    """Where one compared run lives: its run folder, its best-model folder (either may be unknown)."""

    name: str
    run_dir: Path | None
    model_dir: Path | None
    params: dict = field(default_factory=dict)  # a sweep trial's searched values (params.json)


@dataclass(frozen=True)
class Entry:
    """One run as the comparison shows it."""

    name: str
    source: Source
    model: str  # config model.name, with its family: "conv_vae (VAE)"
    epoch: int | None  # the best epoch (metrics.json's, else the selected metrics.jsonl row's)
    criterion: str | None
    metrics: dict[str, float]  # the best epoch's numbers
    protocol: dict | None  # metrics.json's FD/KID protocol; None: not measured, or no metrics.json to say
    rows: list[dict]  # metrics.jsonl: the curves
    samples: Path | None  # the best samples.png, else the run's latest samples_epochNNNN.png

    @property
    def wall_s(self) -> float | None:
        """The run's wall-clock seconds at its last logged epoch, where metrics.jsonl has them."""
        return _wall(self.rows[-1]) if self.rows else None

    @property
    def measured(self) -> bool:
        """Whether the run has FD/KID numbers at all."""
        return any(CURVE_GROUPS["fd"][1](key) or CURVE_GROUPS["kd"][1](key) for key in self.metrics)


def is_model_folder(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() or (folder / "model.safetensors").is_file()


def is_run_folder(folder: Path) -> bool:
    return (folder / "metrics.jsonl").is_file() or (folder / "checkpoints" / "last.pt").is_file()


def is_sweep_folder(folder: Path) -> bool:
    return (folder / "trials").is_dir()


def find_sources(paths: Iterable[Path | str]) -> list[Source]:
    """Every run the arguments name, a sweep expanded to its trials, each run once; refuses fewer than two."""
    found: list[Source] = []
    for path in map(Path, paths):
        if not path.is_dir():
            problem = "is not a folder" if path.exists() else "does not exist"
            raise CompareError(f"{path} {problem}; pass {KINDS} for each run to compare.")
        if is_sweep_folder(path):
            found += [trial_source(trial) for trial in sorted((path / "trials").iterdir()) if is_run_folder(trial)]
        elif is_model_folder(path):
            found.append(model_source(path))
        elif is_run_folder(path):
            found.append(run_source(path))
        else:
            raise _not_a_run(path)
    once: dict[tuple, Source] = {}
    for source in found:
        once.setdefault(_identity(source), source)
    unique = list(once.values())
    if len(unique) < 2:
        got = f"only {unique[0].name} (a run named twice counts once)" if unique else "no run (a sweep without trials)"
        raise CompareError(f"a comparison needs at least two runs, and the arguments name {got}; pass two or more run, "
                           f"model or sweep folders, or a sweep with two trials or more.")
    return _unique_names(unique)


def _not_a_run(path: Path) -> CompareError:
    """What to say of a folder that is none of the three; a folder of runs (logs/) names some of them."""
    try:
        inside = sorted(folder.name for folder in path.iterdir() if folder.is_dir() and
                        (is_run_folder(folder) or is_model_folder(folder) or is_sweep_folder(folder)))
    except OSError:  # unreadable: it is not a run either way
        inside = []
    hint = (f"; it holds runs ({', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''}): pass those, e.g. "
            f"{path / inside[0]}") if inside else f"; pass {KINDS}"
    return CompareError(f"{path} is neither a run folder (metrics.jsonl or checkpoints/last.pt in it), a model folder "
                        f"(metrics.json or model.safetensors) nor a sweep folder (trials/){hint}.")


def _identity(source: Source) -> tuple:
    """The same run named twice (logs/a and best_models/a) is compared once."""
    return tuple(path.resolve() if path is not None else None for path in (source.run_dir, source.model_dir))


def _unique_names(sources: list[Source]) -> list[Source]:
    """Runs of the same name in different places (two logs_dir) are told apart by the folders above them."""
    for depth in range(1, 4):
        names = [source.name for source in sources]
        clashing = {name for name in names if names.count(name) > 1}
        if not clashing:
            return sources
        sources = [_renamed(source, depth) if source.name in clashing else source for source in sources]
    return [Source(f"{source.name} ({index + 1})", source.run_dir, source.model_dir, source.params)
            for index, source in enumerate(sources)]


def _renamed(source: Source, depth: int) -> Source:
    folder = source.run_dir or source.model_dir
    return Source("/".join(folder.resolve().parts[-depth - 1:]), source.run_dir, source.model_dir, source.params)


def trial_source(run_dir: Path) -> Source:
    """A sweep trial: a run folder with its best model in best/ and its searched values in params.json."""
    params = _read_json(run_dir / "params.json") if (run_dir / "params.json").is_file() else {}
    source = run_source(run_dir)
    return Source(source.name, source.run_dir, source.model_dir, params)


def run_source(run_dir: Path) -> Source:
    return Source(run_dir.name, run_dir, _linked_model(run_dir))


def model_source(model_dir: Path) -> Source:
    metrics = _read_json(model_dir / "metrics.json") if (model_dir / "metrics.json").is_file() else {}
    run_dir = _linked_run(model_dir, metrics.get("run_dir"))
    # a sweep trial's best model sits in <trial>/best: its run's name is the trial's
    return Source(run_dir.name if run_dir is not None else model_dir.name, run_dir, model_dir)


def _linked_run(model_dir: Path, named: str | None) -> Path | None:
    """The run folder metrics.json names (a relative logs_dir counts from the folder above best_models/), else the
    folder a sweep trial's best/ sits in."""
    candidates = []
    if named:
        candidates += ([model_dir.parent.parent / named] if not Path(named).is_absolute() else []) + [Path(named)]
    candidates.append(model_dir.parent)
    return next((folder for folder in candidates if is_run_folder(folder) and _names_run(model_dir, folder)), None)


def _linked_model(run_dir: Path) -> Path | None:
    """The run's best model: <run>/best for a sweep trial, else output.best_dir/<run> of its config.yaml, provided its
    metrics.json does not name another run."""
    candidates = [run_dir / "best"]
    best_dir = _section(_read_yaml(run_dir / "config.yaml"), "output").get("best_dir")
    if isinstance(best_dir, str):
        if not Path(best_dir).is_absolute():
            candidates.append(run_dir.parent.parent / best_dir / run_dir.name)
        candidates.append(Path(best_dir) / run_dir.name)
    return next((folder for folder in candidates if is_model_folder(folder) and _names_run(folder, run_dir)), None)


def _names_run(model_dir: Path, run_dir: Path) -> bool:
    """Whether the model's metrics.json names `run_dir` as its run (or names none: an older export, trust the layout)."""
    path = model_dir / "metrics.json"
    named = _read_json(path).get("run_dir") if path.is_file() else None
    if not isinstance(named, str):
        return True
    places = [Path(named)] + ([model_dir.parent.parent / named] if not Path(named).is_absolute() else [])
    return any(place.is_dir() and place.resolve() == run_dir.resolve() for place in places)


def _read_json(path: Path) -> dict:
    return read_json_object(path, CompareError)


def _read_yaml(path: Path) -> dict:
    """A config.yaml as written (not validated: another version's keys must not stop a comparison); {} if absent."""
    if not path.is_file():
        return {}
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CompareError(f"cannot read {path} ({exc}); it should be the config vaegen wrote there.") from exc
    return value if isinstance(value, dict) else {}


def _section(config: dict, name: str) -> dict:
    """A config section as written; {} where it is absent or not a mapping (a hand-edited file)."""
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def read_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl's rows, oldest first."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"cannot read {path} ({exc}); it should hold one JSON row per epoch, as vaegen "
                           f"writes it.") from exc
    if not all(isinstance(row, dict) and _is_number(row.get("epoch")) for row in rows):
        raise CompareError(f"{path} holds a row that is not an object with an epoch; it should be what vaegen wrote.")
    return rows


def _wall(row: dict) -> float | None:
    """A metrics.jsonl row's wall_s; None in rows from before it was logged."""
    return row["wall_s"] if _is_number(row.get("wall_s")) else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(values: dict) -> dict[str, float]:
    return {key: value for key, value in values.items() if _is_number(value) and key not in ("epoch", "wall_s")}


def read_entry(source: Source) -> Entry:
    """What the comparison shows of one run: metrics.json's best epoch, else the row its config selects on."""
    rows = read_rows(source.run_dir) if source.run_dir is not None else []
    exported = {}
    if source.model_dir is not None and (source.model_dir / "metrics.json").is_file():
        exported = _read_json(source.model_dir / "metrics.json")
    folders = [folder for folder in (source.model_dir, source.run_dir) if folder is not None]
    config = next((config for config in (_read_yaml(folder / "config.yaml") for folder in folders) if config), {})
    if exported:
        metrics = exported.get("metrics")
        if not isinstance(metrics, dict):
            raise CompareError(f"{source.model_dir / 'metrics.json'} has no `metrics` object; it should be what "
                               f"vaegen wrote there.")
        epoch, criterion, protocol = exported.get("epoch"), exported.get("criterion"), exported.get("protocol")
    else:
        row, criterion = _selected_row(rows, config)
        metrics, epoch, protocol = row, row.get("epoch"), None
    protocol = protocol if isinstance(protocol, dict) else None
    return Entry(source.name, source, _model_name(config), epoch, criterion, _numbers(metrics), protocol, rows,
                 _samples(source))


def _selected_row(rows: list[dict], config: dict) -> tuple[dict, str | None]:
    """Without metrics.json: the row with the lowest output.select value (fid: the first network's distance)."""
    select = str(_section(config, "output").get("select", "val_nelbo"))
    keys = [key for row in rows for key in row]
    if select == "fid":
        select = next((key for key in keys if CURVE_GROUPS["fd"][1](key) and not key.endswith("_prior")), None)
    scored = [row for row in rows if _is_number(row.get(select))]
    if not scored:  # nothing to select on: the last epoch stands for the run
        return (rows[-1] if rows else {}), None
    return min(scored, key=lambda row: row[select]), select


def _model_name(config: dict) -> str:
    """config model.name and its family's name ("conv_vae (VAE)"), from the registry."""
    from vaegen.models import FAMILIES

    name = _section(config, "model").get("name", "conv_vae") if config else None
    if not isinstance(name, str):
        return "?"
    family = FAMILIES.get(name)
    return f"{name} ({type(family).__name__})" if family is not None else name


def _samples(source: Source) -> Path | None:
    if source.model_dir is not None and (source.model_dir / "samples.png").is_file():
        return source.model_dir / "samples.png"
    grids = sorted(source.run_dir.glob("samples_epoch*.png")) if source.run_dir is not None else []
    return grids[-1] if grids else None


# Protocols
def differences(reference: dict, protocol: dict) -> list[str]:
    """The PROTOCOL_FIELDS in which two protocol blocks differ (a field one of them lacks differs too)."""
    return [name for name in PROTOCOL_FIELDS if reference.get(name) != protocol.get(name)]


def protocol_groups(entries: list[Entry]) -> tuple[list[Entry], dict[str, int]]:
    """The first run of each distinct protocol (A, B, ... in the order met), and each measured run's group."""
    firsts: list[Entry] = []
    group_of: dict[str, int] = {}
    for entry in entries:
        if entry.protocol is None:
            continue
        same = (index for index, first in enumerate(firsts) if not differences(first.protocol, entry.protocol))
        group_of[entry.name] = next(same, len(firsts))
        if group_of[entry.name] == len(firsts):
            firsts.append(entry)
    return firsts, group_of


def _letter(index: int) -> str:
    return chr(ord("A") + index) if index < 26 else f"P{index + 1}"


def protocol_marker(entry: Entry, group_of: dict[str, int]) -> str:
    """The table's protocol cell: the run's protocol letter, flagged where it differs from A's."""
    if entry.name in group_of:
        index = group_of[entry.name]
        return _letter(index) if index == 0 else f"{_letter(index)} ⚠ differs"
    return "unknown" if entry.measured else "none (eval off)"


def _shown(value) -> str:
    return "×".join(map(str, value)) if isinstance(value, list) else str(value)


def protocol_notes(entries: list[Entry]) -> list[str]:
    """The sentences under the table: which runs' FD/KID do not compare and why, then each protocol in words."""
    firsts, group_of = protocol_groups(entries)

    def runs_of(index: int) -> str:
        return ", ".join(entry.name for entry in entries if group_of.get(entry.name) == index)

    notes = []
    for index, first in enumerate(firsts[1:], 1):
        fields = ", ".join(f"{name} ({_shown(firsts[0].protocol.get(name))} vs {_shown(first.protocol.get(name))})"
                           for name in differences(firsts[0].protocol, first.protocol))
        notes.append(f"⚠ The FD/KID of {runs_of(index)} were measured under protocol {_letter(index)}, which differs "
                     f"from protocol A ({runs_of(0)}) in {fields}: those numbers do not compare.")
    unknown = [entry.name for entry in entries if entry.protocol is None and entry.measured]
    if unknown:
        notes.append(f"{', '.join(unknown)}: FD/KID without a protocol (no metrics.json of a best model found), so "
                     f"whether they compare is not known.")
    off = [entry.name for entry in entries if entry.protocol is None and not entry.measured]
    if off:
        notes.append(f"{', '.join(off)}: no FD/KID measured (evaluation off, eval.backbone: none).")
    notes += [f"⚠ {metrics} of {split}: those numbers do not compare." for metrics, split in metric_setting_splits(entries)]
    for index, first in enumerate(firsts):  # how each run drew its samples is its own, not its group's first run's
        drawn: dict[str, list[str]] = {}
        for entry in (entry for entry in entries if group_of.get(entry.name) == index):
            drawn.setdefault(sampling_text(entry.protocol), []).append(entry.name)
        sampled = "; ".join(f"{how} ({', '.join(names)})" for how, names in drawn.items())
        notes.append(f"Protocol {_letter(index)}: {protocol_text(first.protocol, sampling=False)}; samples drawn with {sampled}.")
    return notes


def metric_setting_splits(entries: list[Entry]) -> list[tuple[str, str]]:
    """(the metrics, which runs used which value) for each METRIC_SETTINGS field whose value differs between the runs
    (runs whose protocol does not record it are left out)."""
    splits = []
    for setting, metrics in METRIC_SETTINGS.items():
        runs: dict[object, list[str]] = {}
        for entry in entries:
            if entry.protocol is not None and entry.protocol.get(setting) is not None:
                runs.setdefault(entry.protocol[setting], []).append(entry.name)
        if len(runs) > 1:
            splits.append((metrics, "; ".join(f"{', '.join(names)} used {setting} {value}" for value, names in runs.items())))
    return splits


def refuse_mismatch(entries: list[Entry]) -> None:
    """--strict: FD/KID measured under different protocols (or under one that cannot be read), or metrics measured
    with different settings (METRIC_SETTINGS), stop the comparison."""
    firsts, _ = protocol_groups(entries)
    unknown = [entry.name for entry in entries if entry.protocol is None and entry.measured]
    found = [f"{first.name} differs from {firsts[0].name} in {', '.join(differences(firsts[0].protocol, first.protocol))}"
             for first in firsts[1:]]
    if unknown:
        found.append(f"{', '.join(unknown)} {'has' if len(unknown) == 1 else 'have'} FD/KID without a protocol to check")
    found += [f"{metrics}: {split}" for metrics, split in metric_setting_splits(entries)]
    if found:
        raise ProtocolMismatch(
            f"--strict: the runs' scores were not measured under one protocol ({'; '.join(found)}), so they do not "
            f"compare. Score the models again under the same settings (vaegen test --checkpoint best_models/<run>), or "
            f"compare without --strict to see them side by side, flagged."
        )


# The comparison
@dataclass(frozen=True)
class Comparison:
    entries: list[Entry]
    keys: list[str]  # the metric columns: every metric of any run, first seen first (or those --metric names)

    @property
    def title(self) -> str:
        names = [entry.name for entry in self.entries]
        return " vs ".join(names) if len(names) <= 4 else f"{' vs '.join(names[:3])} and {len(names) - 3} more"


def compare(paths: Iterable[Path | str], metrics: list[str] | None = None) -> Comparison:
    """The runs `paths` name (run, model or sweep folders), with the metric columns `metrics` (glob patterns) picks."""
    entries = [read_entry(source) for source in find_sources(paths)]
    return Comparison(entries, metric_keys(entries, metrics))


def metric_keys(entries: list[Entry], patterns: list[str] | None = None) -> list[str]:
    """Every metric any run has, first seen first; with `patterns`, those matching one (`fd_*`), in that order."""
    every = list(dict.fromkeys(key for entry in entries for key in entry.metrics))
    if not patterns:
        return every
    unmatched = [pattern for pattern in patterns if not fnmatch.filter(every, pattern)]
    if unmatched:
        raise CompareError(f"no run has a metric matching --metric {', '.join(unmatched)}; the runs have "
                           f"{', '.join(every) or 'no metrics'}.")
    return [key for key in every if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)]


def cell(value) -> str:
    """A number as the tables show it (4 significant digits), a missing one as MISSING."""
    if value is None:
        return MISSING
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    return f"{seconds:.0f} s" if seconds < 180 else f"{seconds / 60:.1f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.1f} h"


def table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The header and one row of cells per run: what it is, when it was best, its protocol, then every metric."""
    entries = comparison.entries
    _, group_of = protocol_groups(entries)
    with_params = any(entry.source.params for entry in entries)
    header = ["run", "model", *(["params"] if with_params else []), "best epoch", "epochs", "wall time",
              "selected on", "protocol", *comparison.keys]
    rows = []
    for entry in entries:
        params = [", ".join(f"{key}={cell(value)}" for key, value in entry.source.params.items()) or MISSING]
        rows.append([entry.name, entry.model, *(params if with_params else []), cell(entry.epoch),
                     cell(entry.rows[-1]["epoch"] if entry.rows else None), duration(entry.wall_s),
                     cell(entry.criterion), protocol_marker(entry, group_of),
                     *(cell(entry.metrics.get(key)) for key in comparison.keys)])
    return header, rows


def markdown_table(comparison: Comparison) -> str:
    header, rows = table(comparison)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(text.replace("|", "\\|") for text in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def console_table(comparison: Comparison, width: int = 24) -> str:
    """The table turned on its side, a column per run, which a terminal holds however many metrics there are."""
    header, rows = table(comparison)
    columns = [[label, *(row[index] for row in rows)] for index, label in enumerate(header)]
    columns = [[text if len(text) <= width else text[:width - 1] + "…" for text in column] for column in columns]
    widths = [max(len(line[index]) for line in columns) for index in range(len(columns[0]))]
    return "\n".join("  ".join(text.ljust(size) for text, size in zip(line, widths)).rstrip() for line in columns)


# Pictures
def curve_keys(entries: list[Entry], group: str) -> list[str]:
    """The metrics.jsonl keys of a curve group, first seen first (train_loss and val_loss lead the losses)."""
    belongs = CURVE_GROUPS[group][1]
    seen = dict.fromkeys(key for entry in entries for row in entry.rows for key, value in row.items()
                         if belongs(key) and _is_number(value))
    lead = [key for key in ("train_loss", "val_loss") if key in seen]
    return lead + [key for key in seen if key not in lead]


def curves_png(comparison: Comparison, group: str) -> bytes | None:
    """One curve group (CURVE_GROUPS) of every run, against epoch and wall time, as PNG bytes; None if no run has it."""
    keys = curve_keys(comparison.entries, group)
    if not keys:
        return None
    quantities = {
        key: {entry.name: [(row["epoch"], _wall(row), row[key]) for row in entry.rows if _is_number(row.get(key))]
              for entry in comparison.entries if any(_is_number(row.get(key)) for row in entry.rows)}
        for key in keys
    }
    names = [entry.name for entry in comparison.entries]
    return overlaid_curves(quantities, names, title=f"{CURVE_GROUPS[group][0]}: {comparison.title}")


def samples_picture(comparison: Comparison) -> Image.Image | None:
    """Each run's sample grid under its name, in one picture; None if no run has one."""
    shown = [entry for entry in comparison.entries if entry.samples is not None]
    if not shown:
        return None
    images = []
    for entry in shown:
        try:
            with Image.open(entry.samples) as image:
                images.append(image.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as exc:
            raise CompareError(f"cannot read {entry.samples} ({exc}); it should be the PNG vaegen wrote there.") from exc
    return side_by_side(images, [entry.name for entry in shown])


# Writing
def default_out_dir(paths: Iterable[Path | str]) -> Path:
    """comparisons/<a>-vs-<b>...: the argument folders' names (a sweep trial's best/ by its trial), shortened."""
    names = []
    for path in map(Path, paths):
        folder = path.resolve()
        names.append(re.sub(r"[^\w.-]+", "_", folder.parent.name if folder.name == "best" else folder.name))
    joined = "-vs-".join(names)
    if len(joined) > NAME_ROOM:
        joined = "-vs-".join(name[:30] for name in names[:2]) + (f"-and-{len(names) - 2}-more" if len(names) > 2 else "")
    return Path("comparisons") / joined


def write(comparison: Comparison, out_dir: Path) -> list[Path]:
    """compare.md (the table, the protocol notes, the pictures), compare.csv and the PNGs, into `out_dir`."""
    make_output_folder(out_dir, "--out")
    files = []
    for group in CURVE_GROUPS:
        png = curves_png(comparison, group)
        if png is not None:
            files.append(out_dir / f"curves_{group}.png")
            atomic_write(files[-1], lambda tmp, png=png: tmp.write_bytes(png))
    picture = samples_picture(comparison)
    if picture is not None:
        files.append(out_dir / "samples.png")
        atomic_write(files[-1], lambda tmp: picture.save(tmp, format="PNG"))
    write_text_atomic(out_dir / "compare.csv", csv_text(comparison))
    write_text_atomic(out_dir / "compare.md", markdown(comparison, [path.name for path in files]))
    return [out_dir / "compare.md", out_dir / "compare.csv", *files]


def csv_text(comparison: Comparison) -> str:
    """The table with every number at full precision, for a spreadsheet."""
    _, group_of = protocol_groups(comparison.entries)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "model", "best_epoch", "epochs", "wall_s", "selected_on", "protocol", *comparison.keys])
    for entry in comparison.entries:
        writer.writerow([entry.name, entry.model, entry.epoch, entry.rows[-1]["epoch"] if entry.rows else None,
                         entry.wall_s, entry.criterion, protocol_marker(entry, group_of),
                         *(entry.metrics.get(key) for key in comparison.keys)])
    return buffer.getvalue()


def markdown(comparison: Comparison, pictures: list[str]) -> str:
    """compare.md: the table, what the protocol column means for these runs, the pictures, where each run lives."""
    titles = {f"curves_{group}.png": title for group, (title, _) in CURVE_GROUPS.items()} | {"samples.png": "samples"}
    places = [f"- **{entry.name}**: " + ", ".join(f"{kind} `{folder}`" for kind, folder in
                                                  [("run", entry.source.run_dir), ("model", entry.source.model_dir)]
                                                  if folder is not None) for entry in comparison.entries]
    untimed = [entry.name for entry in comparison.entries if entry.rows and entry.wall_s is None]
    unplotted = [entry.name for entry in comparison.entries if not entry.rows]
    lines = [f"# {comparison.title}", "", markdown_table(comparison), "",
             *(f"{note}\n" for note in protocol_notes(comparison.entries))]
    if untimed:
        lines.append(f"{', '.join(untimed)}: no wall time in metrics.jsonl (written before vaegen logged it), so "
                     f"plotted against the epoch only.\n")
    if unplotted:
        lines.append(f"{', '.join(unplotted)}: no run folder with metrics.jsonl found, so not in the curves.\n")
    lines += ["## Pictures", "", *(f"![{titles[name]}]({name})\n" for name in pictures), "## Runs", "", *places, ""]
    return "\n".join(lines)
