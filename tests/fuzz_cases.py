"""What tests/test_fuzz.py draws and the one check it makes of every `vaegen train` (or `vaegen config`) it runs.

- Settings come from the schema: `schema_settings()` walks `Config.model_fields`, so a key added to config.py is
  fuzzed without an edit here. A valid value follows from the key's type, Literal choices and Field bounds; the
  tables below keep full runs cheap (small ints, no network-bound choices). An invalid value is the wrong kind,
  out of bounds, nan/inf, an empty list, an unknown choice or key, a section given a single value...
- Data folders are drawn as a `DataSpec` and written into the example's own temporary folder.
- `run_cli` runs `vaegen.apps.cli.main` in-process; `contract_violations` is the user-facing contract of one run.

`KNOWN_DEFECTS` names the defects being fixed elsewhere that the properties steer around; each has a strict-xfail
regression test in test_fuzz.py. Delete a name once its fix lands (its regression test then passes and loses its mark).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import traceback
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np
import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from pydantic import BaseModel

# ---------------------------------------------------------------------------------------
# Profiles: tests/conftest.py registers them before pytest's --hypothesis-profile option is read


def register_profiles() -> None:
    """`ci` (the default: a fixed, reproducible set of examples, a failure reported as found), `ci-shrink` (the same
    examples, a failure shrunk to a minimal one: minutes, as each example trains) and `long` (2,000 examples, new
    ones every run, shrunk, kept in .hypothesis/ to be tried first next time).

    The properties scale their example counts from the profile's max_examples (`examples(share)`)."""
    common = {"deadline": None, "print_blob": True,
              "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]}
    settings.register_profile("ci-shrink", max_examples=500, derandomize=True, database=None, **common)
    settings.register_profile("ci", settings.get_profile("ci-shrink"), phases=[Phase.explicit, Phase.generate])
    settings.register_profile("long", max_examples=2000, **common)
    # pytest's --hypothesis-profile, when given, is loaded after this (in the plugin's pytest_configure)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(share: float) -> int:
    """This property's number of examples: `share` of the loaded profile's max_examples (ci: 500, long: 2,000)."""
    return max(1, round(settings.default.max_examples * share))


# ---------------------------------------------------------------------------------------
# Known defects not fixed yet (each with a strict-xfail regression test in test_fuzz.py): a name here stops the
# harness from drawing, or from failing on, that defect; delete it once the fix lands. None is open today.

KNOWN_DEFECTS: frozenset[str] = frozenset()

# Known defects the properties may still meet: a traceback that says this is not a violation while its name is known
KNOWN_TRACEBACKS: dict[str, str] = {}  # name -> a line of its traceback


# ---------------------------------------------------------------------------------------
# The schema, walked


@dataclass(frozen=True)
class Kind:
    """One alternative of a setting's type: "int", "float", "bool", "str", "path", "none", "literal" or "list"."""

    name: str
    choices: tuple = ()
    items: tuple = ()  # a list's item annotations; (X, Ellipsis) for any length
    bounds: tuple = ()  # (("ge", 1), ("pattern", ...), ...)

    def bound(self, name: str) -> Any:
        return dict(self.bounds).get(name)


@dataclass(frozen=True)
class Setting:
    key: str  # "train.epochs"
    kinds: tuple[Kind, ...]
    required: bool

    def takes(self, *names: str) -> bool:
        return any(kind.name in names for kind in self.kinds)


_BOUND_NAMES = ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern")


def _bounds(metadata) -> tuple:
    found = []
    for item in metadata:
        for name in _BOUND_NAMES:
            value = getattr(item, name, None)
            if value is not None:
                found.append((name, value))
    return tuple(found)


def kinds_of(annotation: Any, bounds: tuple = ()) -> tuple[Kind, ...]:
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        return kinds_of(inner, bounds + _bounds(metadata))
    if origin in (Union, types.UnionType):
        return tuple(kind for arg in get_args(annotation) for kind in kinds_of(arg, bounds))
    if origin is Literal:
        return (Kind("literal", choices=get_args(annotation)),)
    if origin in (tuple, list):
        return (Kind("list", items=get_args(annotation) or (Any, Ellipsis), bounds=bounds),)
    simple = {int: "int", float: "float", bool: "bool", str: "str", Path: "path", type(None): "none"}
    return (Kind(simple.get(annotation, "other"), bounds=bounds),)


def schema_settings(schema: type[BaseModel] | None = None, prefix: str = "") -> list[Setting]:
    """Every leaf setting of `schema` (default: vaegen's training Config), walking its sections recursively."""
    if schema is None:
        from vaegen.config import Config

        schema = Config
    found = []
    for name, info in schema.model_fields.items():
        key = f"{prefix}{name}"
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += schema_settings(info.annotation, f"{key}.")
        else:
            found.append(Setting(key, kinds_of(info.annotation, _bounds(info.metadata)), info.is_required()))
    return found


def sections() -> list[str]:
    from vaegen.config import Config

    return [name for name, info in Config.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)]


# ---------------------------------------------------------------------------------------
# Cheap valid values. The schema says what is valid; these tables say what trains in well under a second.

CEILINGS = {  # integers (and the items of integer lists) are drawn up to this
    "data.image_size": 16,  # pixels: every layer's cost grows with their square
    "model.latent_dim": 8,  # the latent width barely matters to the code paths
    "model.widths": 8,  # channels of a stride-2 convolution per entry
    "model.blocks": 2,  # res_vae: residual blocks per resolution
    "train.epochs": 2,  # each epoch adds a pass, a validation and a checkpoint write
    "train.batch_size": 8,  # larger than the split already means one batch of all of it
    "train.log_every": 3,  # the divergence check runs every log_every steps: keep it reachable
    "eval.every": 2,  # more than the epochs means the last epoch's evaluation only
    "eval.num_grid": 8,  # images in each sample grid PNG
    "eval.num_samples": 4,  # efficientnet-lite0 scores ~12 images/s at 224 px on 2 cores
    "eval.batch_size": 8,
    "eval.kid_subset_size": 8,
    "beta.warmup": 3,
    "beta.cycle": 3,
    "sampler.components": 3,  # a Gaussian mixture fitted at every evaluation
    "adversarial.start_epoch": 2,  # later than the epochs: the discriminator never joins
    "adversarial.widths": 8,  # discriminator channels per stride-2 layer
    "output.checkpoint_every": 3,
}
DEFAULT_SPAN = 4  # an integer key without a row above: its lower bound up to this much more
UNCAPPED = {"train.seed"}  # every value costs the same: drawn from the schema's whole range in full runs too
STEPS = {"data.image_size": 4}  # divisible by 2**len(model.widths) for the <= 2 layers drawn below
LIST_LENGTHS = {"model.widths": 2, "adversarial.widths": 2}  # each entry halves the image once more
FLOAT_RANGES = {  # tame floats for full runs; the divergence property draws the wild ones
    "optim.lr": (1e-5, 1e-2),
    "beta.max": (0.0, 4.0),
    "adversarial.lr": (1e-5, 1e-2),
}
DEFAULT_FLOAT_RANGE = (-10.0, 10.0)  # clipped to the key's bounds
CHOICES = {  # choices a full run may take here (the config property draws every one)
    "eval.backbone": ("none",),  # a real network is the backbone property's: efficientnet-lite0 costs seconds per run
    "eval.extra_backbones": (),  # a second network per evaluation; inception and dinov2 need weights not on this machine
    "loss.perceptual": ("none",),  # runs a 224 px ImageNet network in every step, and scoring beside it needs dinov2's weights
    "logging.wandb": ("disabled",),  # offline starts W&B's service (seconds, outliving the example); online needs the network
    "train.compile": (False, "auto"),  # torch.compile on CPU costs tens of seconds; auto is off on CPU
    "train.device": ("cpu", "auto"),  # cuda/mps are refused here in microseconds: the config property covers them
    # the other sources read a torchvision dataset or an array file, not the drawn folder (tests/test_data_sources.py)
    "data.source": ("folder",),
    "data.dataset": (None,),
    "data.split": (None,),
    "data.download": (True,),
    "data.labels": (None,),
}
def _model_names() -> list[str]:
    """model.name's valid values, which its annotation (str) does not tell: the model registry."""
    from vaegen.models import MODELS

    return sorted(MODELS)


def _item_kinds(kind: Kind) -> list[tuple[Kind, ...]]:
    items = [item for item in kind.items if item is not Ellipsis]
    return [kinds_of(item) for item in items]


def _variadic(kind: Kind) -> bool:
    return Ellipsis in kind.items or len(kind.items) <= 1


_controls = [] if "newlines_in_names_split_the_error" in KNOWN_DEFECTS else ["Cc"]  # a newline in a name, once fixed
name_chars = st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Zs", *_controls], exclude_characters="/\\\0")
path_parts = st.text(name_chars, min_size=1, max_size=10).filter(lambda part: part not in (".", "..") and not part.isspace())
relative_paths = st.lists(path_parts, min_size=1, max_size=2).map(lambda parts: "/".join(parts))


def _int_range(setting: Setting, kind: Kind, tame: bool, item: bool = False) -> tuple[int, int]:
    low = kind.bound("ge") if kind.bound("ge") is not None else (kind.bound("gt") + 1 if kind.bound("gt") is not None else None)
    high = kind.bound("le") if kind.bound("le") is not None else (kind.bound("lt") - 1 if kind.bound("lt") is not None else None)
    if item or setting.key in ("data.image_size",):
        low = 1 if low is None else low  # list items carry their bounds in validators (image sizes, widths: >= 1)
    if tame and setting.key not in UNCAPPED:
        low = 0 if low is None else low
        ceiling = CEILINGS.get(setting.key, low + DEFAULT_SPAN)
        high = ceiling if high is None else min(high, ceiling)
    else:
        low = -(2**70) if low is None else low
        high = 2**70 if high is None else high
    return low, high


def _int_edges(low: int, high: int) -> list[int]:
    """Where integers overflow a C type or a library's seed range, within [low, high]."""
    edges = [low, high, -1, 0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]
    return sorted({edge for edge in edges if low <= edge <= high})


def _float_range(setting: Setting, kind: Kind, tame: bool) -> dict:
    low = kind.bound("ge") if kind.bound("ge") is not None else kind.bound("gt")
    high = kind.bound("le") if kind.bound("le") is not None else kind.bound("lt")
    if tame:
        tame_low, tame_high = FLOAT_RANGES.get(setting.key, DEFAULT_FLOAT_RANGE)
        low = tame_low if low is None else max(low, tame_low)
        high = tame_high if high is None else min(high, tame_high)
    return {"min_value": low, "max_value": high, "exclude_min": kind.bound("gt") is not None and low == kind.bound("gt"),
            "exclude_max": kind.bound("lt") is not None and high == kind.bound("lt"), "allow_nan": False, "allow_infinity": False}


def _value_of_kind(setting: Setting, kind: Kind, tame: bool, item: bool = False) -> st.SearchStrategy:
    if kind.name == "none":
        return st.none()
    if kind.name == "bool":
        return st.booleans()
    if kind.name == "literal":
        return st.sampled_from(kind.choices)
    if kind.name == "int":
        low, high = _int_range(setting, kind, tame, item)
        step = STEPS.get(setting.key, 1) if tame else 1
        if step > 1:
            return st.integers(max(1, -(-low // step)), high // step).map(lambda n: n * step)
        return st.one_of(st.integers(low, high), st.sampled_from(_int_edges(low, high)))
    if kind.name == "float":
        return st.floats(**_float_range(setting, kind, tame))
    if kind.name == "str":
        if setting.key == "model.name":
            return st.sampled_from(_model_names())
        if kind.bound("pattern"):
            matching = st.from_regex(kind.bound("pattern"), fullmatch=True)
            return matching.filter(lambda text: len(text) <= kind.bound("max_length")) if kind.bound("max_length") else matching
        return st.text(name_chars, min_size=1, max_size=12)
    if kind.name == "path":
        return relative_paths  # relative: runs start in the example's temporary folder
    if kind.name == "list":
        item_kinds = _item_kinds(kind)
        if _variadic(kind):
            inner = st.one_of([_value_of_kind(setting, k, tame, item=True) for k in item_kinds[0]])
            low = kind.bound("min_length") or 0
            return st.lists(inner, min_size=low, max_size=max(low, LIST_LENGTHS.get(setting.key, 3))).map(list)
        return st.tuples(*[st.one_of([_value_of_kind(setting, k, tame, item=True) for k in kinds]) for kinds in item_kinds]).map(list)
    return st.nothing()


def valid_value(setting: Setting, tame: bool) -> st.SearchStrategy:
    """A value the schema accepts for `setting` (cross-field checks aside); `tame`: cheap to train with too."""
    if tame and setting.key in CHOICES:
        choices = CHOICES[setting.key]
        if setting.takes("list"):
            return st.lists(st.sampled_from(choices), max_size=1, unique=True) if choices else st.just([])
        return st.sampled_from(choices)
    kinds = [kind for kind in setting.kinds if kind.name != "other"]
    if tame and setting.key == "data.image_size":  # one number is a square: both spellings are valid
        kinds = [Kind("int"), *kinds]
    return st.one_of([_value_of_kind(setting, kind, tame) for kind in kinds])


# ---------------------------------------------------------------------------------------
# Overrides: `--set key=value`, valid or not


@dataclass(frozen=True)
class Override:
    text: str  # what follows --set
    refused: bool  # the CLI must refuse it (exit 2)...
    names: str = ""  # ...with a message naming this


def as_yaml(value: Any) -> str:
    """`value` as one line of YAML, as a user types it after --set key= (PyYAML quotes what would read otherwise)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip().removesuffix("...").strip()


def _set(key: str, value: Any) -> str:
    return f"{key}={as_yaml(value)}"


@st.composite
def valid_override(draw, settings_: list[Setting], tame: bool) -> Override:
    setting = draw(st.sampled_from(settings_))
    return Override(_set(setting.key, draw(valid_value(setting, tame))), refused=False)


def _misspelt(word: str, valid: list[str]) -> st.SearchStrategy:
    """A near miss of `word` that is none of `valid`: a letter dropped, doubled or swapped, or an underscore lost."""
    options = {word[:i] + word[i + 1:] for i in range(len(word))} | {word[:i] + word[i] + word[i:] for i in range(len(word))}
    options |= {word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1)} | {word.replace("_", "")}
    options = sorted(option for option in options if option and option not in valid)
    return st.sampled_from(options)


@st.composite
def invalid_override(draw, settings_: list[Setting]) -> Override:
    """A value or key the config must refuse, naming it; or a malformed --set (refused too)."""
    setting = draw(st.sampled_from(settings_))
    key = setting.key
    numbers = setting.takes("int", "float")
    free_text = setting.takes("str", "path")
    candidates: list[tuple[str, Any]] = [("mapping", {"x": 1}), ("empty mapping", {})]
    if not setting.takes("none"):
        candidates.append(("null", None))
    if not setting.takes("list"):
        candidates.append(("list for a single value", [1, 2]))
    if not free_text:
        literal = next((kind for kind in setting.kinds if kind.name == "literal"), None)
        word = str(literal.choices[0]) if literal and isinstance(literal.choices[0], str) else "fast"
        candidates.append(("unknown choice", draw(_misspelt(word, [str(c) for kind in setting.kinds for c in kind.choices]))))
        if not setting.takes("bool"):
            candidates.append(("yes/no", draw(st.booleans())))
    if numbers and not free_text:
        candidates += [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]
        if not setting.takes("float"):
            candidates.append(("fraction for an integer", 2.5))
    for kind in setting.kinds:
        if kind.name not in ("int", "float") or free_text:
            continue
        below = (lambda b: b - 1) if kind.name == "int" else (lambda b: math.nextafter(b, -math.inf))  # the nearest value outside
        above = (lambda b: b + 1) if kind.name == "int" else (lambda b: math.nextafter(b, math.inf))
        for name, outside in (("ge", below), ("gt", lambda b: b), ("le", above), ("lt", lambda b: b)):
            if kind.bound(name) is not None:
                candidates.append((f"out of bounds ({name} {kind.bound(name)})", outside(kind.bound(name))))
    for kind in setting.kinds:
        pattern, longest = kind.bound("pattern"), kind.bound("max_length")
        if kind.name == "str" and pattern:
            candidates += [("against the pattern", text) for text in ("-x", "a b", "gpu", "ü", "cpu ")
                           if not re.fullmatch(pattern, text)]
        if kind.name == "str" and longest:
            candidates.append(("too long", "a" * (longest + 1)))
        if kind.name == "str" and setting.key == "model.name":
            candidates.append(("unregistered", draw(_misspelt(_model_names()[0], _model_names()))))
        if kind.name == "path":
            candidates += [("a name no file system holds", "x" * 300), ("a name no file system holds", "out/" + "é" * 128 + "/x"),
                           ("a NUL character", "out/a\0b")]
    for kind in setting.kinds:
        if kind.name != "list":
            continue
        fixed = not _variadic(kind)
        if fixed or (kind.bound("min_length") or 0) >= 1:
            candidates.append(("empty list", []))
        item = 8 if any(k.name == "int" for kinds in _item_kinds(kind) for k in kinds) else 0.5
        length = len(_item_kinds(kind)) if fixed else 1
        candidates += [("null item", [item] * (length - 1) + [None]), ("mapping item", [item] * (length - 1) + [{"x": 1}])]
        if fixed:
            candidates.append(("one item too many", [item] * (length + 1)))
        if any(k.name in ("int", "float") for kinds in _item_kinds(kind) for k in kinds):
            candidates += [("text item", [item] * (length - 1) + ["abc"]), ("nan item", [item] * (length - 1) + [math.nan])]
    _, value = draw(st.sampled_from(candidates))  # (what each is, for whoever reads a failing example)
    return Override(_set(key, value), refused=True, names=key)


@st.composite
def invalid_key(draw, settings_: list[Setting]) -> Override:
    """An unknown key, a key under a single value, a section given a single value, or a malformed --set."""
    setting = draw(st.sampled_from(settings_))
    section, _, name = setting.key.rpartition(".")
    siblings = [s.key.rpartition(".")[2] for s in settings_ if s.key.rpartition(".")[0] == section]
    all_sections = sections()
    choice = draw(st.sampled_from(["misspelt key", "misspelt section", "key under a value", "section as a value", "malformed"]))
    if choice == "misspelt key":
        wrong = f"{section}.{draw(_misspelt(name, siblings))}"
        return Override(f"{wrong}=1", refused=True, names=wrong)
    if choice == "misspelt section":
        wrong = draw(_misspelt(section, all_sections))
        return Override(f"{wrong}.{name}=1", refused=True, names=wrong)
    if choice == "key under a value":
        return Override(f"{setting.key}.extra=1", refused=True, names=setting.key)
    if choice == "section as a value":
        value = draw(st.sampled_from([[1, 2], 5, "foo", True]))
        return Override(_set(section, value), refused=True, names=section)
    text = draw(st.sampled_from(["=5", "novalue", f"{section}..{name}=1", f".{name}=1", f"{setting.key}=[1,", f"{setting.key}={{a: "]))
    return Override(text, refused=True, names="--set")


def empty_sections() -> st.SearchStrategy:
    """`--set model=` and `--set model={}` mean the section's defaults: valid."""
    texts = st.sampled_from(sections()).flatmap(lambda name: st.sampled_from([f"{name}=", f"{name}={{}}"]))
    return texts.map(lambda text: Override(text, refused=False))


# Whole config files that are no config: each is refused whatever the overrides, naming the file
FILE_FORMS = {
    "list": "- data\n- model\n",
    "scalar": "42\n",
    "invalid yaml": "data: [unclosed\n  root: x\n",
    "tab indented": "data:\n\troot: x\n",
    "not utf-8": b"data:\n  root: \xff\xfe\xfd\n",
    "folder": None,
    "missing": None,
    "name too long": None,
}


# ---------------------------------------------------------------------------------------
# Data folders


# (format, mode) pairs that Pillow writes
FORMATS = {"PNG": ("L", "RGB", "RGBA", "P", "I;16", "LA", "1"), "JPEG": ("L", "RGB", "CMYK"), "BMP": ("L", "RGB", "RGBA", "P", "1")}
EXTENSIONS = {"PNG": (".png", ".PNG"), "JPEG": (".jpg", ".jpeg", ".JPG"), "BMP": (".bmp",)}
DAMAGE = ("truncated", "random bytes", "empty")
EXTRAS = ("hidden file", "hidden folder at the root", "hidden folder in a class", "link to root", "link to a class", "link outside",
          "dangling link", "linked image", "loose image", "text file", "empty class", "too large")
EXCLUDED_EXTRAS = {extra for extra, defect in [("hidden folder in a class", "hidden_folders_in_classes_scanned"),
                                                ("link to root", "symlink_to_root_is_a_class")] if defect in KNOWN_DEFECTS}
HIDDEN = ".hid"  # the prefix of every hidden file and folder the harness writes; their images are all unreadable


@dataclass(frozen=True)
class ImageSpec:
    name: str  # without extension
    fmt: str
    mode: str
    size: tuple[int, int]  # width, height
    extension: str
    damage: str | None = None  # "truncated", "random bytes", "empty"


@dataclass(frozen=True)
class DataSpec:
    classes: tuple[tuple[str, tuple[ImageSpec, ...]], ...]  # () with `flat`
    flat: tuple[ImageSpec, ...] = ()
    extras: frozenset[str] = frozenset()
    seed: int = 0  # the pixels


folder_names = st.text(name_chars, min_size=1, max_size=12).filter(
    lambda name: name not in (".", "..") and not name.startswith(".") and name.strip() == name)  # hidden ones are EXTRAS


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in `n` draws (hypothesis's integers favour their bounds, so not integers(0, n - 1) == 0)."""
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def image_specs(draw, damage_rate: int = 25) -> ImageSpec:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 3) if draw(one_in(4)) else st.integers(1, 40))  # some very thin
    if draw(st.booleans()):
        width, height = height, width
    extension = draw(st.sampled_from((".png", ".jpg", ".bmp") if draw(one_in(6)) else EXTENSIONS[fmt]))  # sometimes the wrong one
    damage = draw(st.sampled_from(DAMAGE)) if damage_rate and draw(one_in(damage_rate)) else None
    return ImageSpec(draw(folder_names), fmt, draw(st.sampled_from(FORMATS[fmt])), (width, height), extension, damage)


FATAL_EXTRAS = ("empty class", "too large")  # each stops a run (exit 2): drawn rarely, so that most examples train


@st.composite
def data_specs(draw, max_classes: int = 4, max_images: int = 4, damage_rate: int = 25, fatal: bool = True,
               layouts: tuple[str, ...] = ("classes", "classes", "classes", "flat", "one image", "many classes")) -> DataSpec:
    """A data folder: classes or flat, of images of any size, mode and format; `damage_rate`: about one image in
    this many is unreadable (0: none); `fatal`: sometimes an extra that stops the run (an empty class, ...)."""
    layout = draw(st.sampled_from(layouts))
    benign = [extra for extra in EXTRAS if extra not in EXCLUDED_EXTRAS and extra not in FATAL_EXTRAS]
    extras = draw(st.frozensets(st.sampled_from(benign), max_size=2))
    if fatal and draw(one_in(6)):
        extras |= {draw(st.sampled_from(FATAL_EXTRAS))}
    seed = draw(st.integers(0, 2**32 - 1))
    file_name = lambda image: (image.name + image.extension).lower()  # one file per name, even on a case-insensitive disk
    images = lambda low, high: st.lists(image_specs(damage_rate), min_size=low, max_size=high, unique_by=file_name).map(tuple)
    if layout == "flat":
        return DataSpec((), draw(images(2, max_images)), extras, seed)
    if layout == "one image":
        return DataSpec((("only", draw(images(1, 1))),), (), extras, seed)
    count = (max_classes + 1, 3 * max_classes) if layout == "many classes" else (1, max_classes)
    names = draw(st.lists(folder_names, min_size=count[0], max_size=count[1], unique_by=str.lower))
    # a class of one image has no validation image (a split needs 2 per class): sometimes, not mostly
    per_class = (1 if draw(one_in(4)) else 2, 2 if layout == "many classes" else max_images)
    return DataSpec(tuple((name, draw(images(*per_class))) for name in names), (), extras, seed)


def _picture(spec: ImageSpec, rng: np.random.Generator):
    from PIL import Image

    width, height = spec.size
    if spec.mode == "I;16":
        return Image.frombytes("I;16", (width, height), rng.bytes(width * height * 2))
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if spec.mode == "P":
        return rgb.quantize(4)
    if spec.mode in ("RGBA", "LA"):
        image = rgb.convert(spec.mode)
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
        return image
    return rgb.convert(spec.mode)


def write_image(path: Path, spec: ImageSpec, rng: np.random.Generator) -> None:
    buffer = io.BytesIO()
    _picture(spec, rng).save(buffer, format=spec.fmt)
    data = buffer.getvalue()
    if spec.damage == "truncated":
        data = data[: max(1, len(data) // 2)]
    elif spec.damage == "random bytes":
        data = rng.bytes(64)
    elif spec.damage == "empty":
        data = b""
    path.write_bytes(data)


def too_large_png() -> bytes:
    """A PNG header for 20000×20000 px (400 Mpx, over Pillow's decompression-bomb limit), with a token of data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_data(root: Path, spec: DataSpec) -> Path:
    """The folder `spec` describes, at `root` (made here); returns root. Hidden files hold unreadable bytes."""
    rng = np.random.default_rng(spec.seed)
    root.mkdir(parents=True)
    for image in spec.flat:
        write_image(root / (image.name + image.extension), image, rng)
    for name, images in spec.classes:
        (root / name).mkdir()
        for image in images:
            write_image(root / name / (image.name + image.extension), image, rng)
    good = ImageSpec("extra", "PNG", "RGB", (9, 7), ".png")
    first_class = root / spec.classes[0][0] if spec.classes else None
    unreadable = b"not an image"
    for extra in sorted(spec.extras):
        with contextlib.suppress(FileExistsError, IsADirectoryError):  # a drawn file or folder has its name: no extra
            if extra == "hidden file":
                (root / f"{HIDDEN}den.png").write_bytes(unreadable)
                if first_class:
                    (first_class / f"{HIDDEN}den.jpg").write_bytes(unreadable)
            elif extra == "hidden folder at the root":
                (root / f"{HIDDEN}git").mkdir()
                (root / f"{HIDDEN}git" / "x.png").write_bytes(unreadable)
            elif extra == "hidden folder in a class" and first_class:
                (first_class / f"{HIDDEN}thumbs").mkdir()
                (first_class / f"{HIDDEN}thumbs" / "x.png").write_bytes(unreadable)
            elif extra == "link to root":
                (root / "loop").symlink_to(".")
            elif extra == "link to a class" and first_class:
                (root / "alias").symlink_to(first_class.name)
            elif extra == "link outside":
                outside = root.parent / "outside"
                outside.mkdir(exist_ok=True)
                write_image(outside / "o.png", good, rng)
                (root / "outside").symlink_to(outside)
            elif extra == "dangling link":
                (root / "gone.png").symlink_to("missing.png")
                if first_class:
                    (first_class / "gone.png").symlink_to("missing.png")
            elif extra == "linked image" and first_class:
                write_image(root.parent / "linked.png", good, rng)
                (first_class / "linked.png").symlink_to(root.parent / "linked.png")
            elif extra == "loose image" and spec.classes:
                write_image(root / "loose.png", good, rng)
            elif extra == "text file":
                (root / "README.txt").write_text("not an image\n")
                if first_class:
                    (first_class / "notes.txt").write_text("not an image\n")
            elif extra == "empty class":
                (root / "empty").mkdir()
            elif extra == "too large":
                (first_class or root).joinpath("huge.png").write_bytes(too_large_png())
    return root


def class_candidates(root: Path) -> set[str]:
    """The names that may be classes: non-hidden folders (or links to folders) that are not the root or above it."""
    above = {root.resolve(), *root.resolve().parents}
    return {entry.name for entry in root.iterdir()
            if not entry.name.startswith(".") and entry.is_dir() and entry.resolve() not in above}


# ---------------------------------------------------------------------------------------
# Running the CLI in-process


@dataclass
class CliResult:
    argv: list[str]
    code: int | None
    stdout: str
    stderr: str
    traceback: str | None = None  # of an exception that escaped main()
    warnings: list[str] = field(default_factory=list)

    def error(self) -> str:
        """The `error: ...` paragraph (from its line to the end of stderr)."""
        at = self.stderr.rfind("error: ")
        if at < 0:
            return ""
        return self.stderr[self.stderr.rfind("\n", 0, at) + 1:].strip()

    def describe(self) -> str:
        shown = " ".join(repr(arg) if " " in arg or not arg else arg for arg in self.argv)
        return f"vaegen {shown}\nexit {self.code}\nstderr:\n{self.stderr[-3000:]}" + (f"\n{self.traceback}" if self.traceback else "")


@contextlib.contextmanager
def _inside(folder: Path, env: dict[str, str]):
    cwd, saved = os.getcwd(), {name: os.environ.get(name) for name in env}
    os.chdir(folder)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(cwd)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_cli(argv: list[str], workdir: Path) -> CliResult:
    """`vaegen ARGV` as the console script runs it, in `workdir`, with its decode cache there too."""
    from vaegen.apps.cli import main

    out, err = io.StringIO(), io.StringIO()
    code, escaped = None, None
    with _inside(workdir, {"VAEGEN_CACHE": str(workdir / "vaegen-cache")}), warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - exactly what the contract forbids: a traceback for the user
            escaped = traceback.format_exc()
    return CliResult(list(argv), code, out.getvalue(), err.getvalue(), escaped, [str(w.message) for w in caught])


# ---------------------------------------------------------------------------------------
# The contract


def _floating_tensors(value: Any, where: str = ""):
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _floating_tensors(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _floating_tensors(item, f"{where}[{index}]")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _files_named(root: Path, names: set[str]):
    for folder, _, files in os.walk(root):  # symlinks in generated data are not followed
        for name in files:
            if name in names or (".tmp" in names and re.fullmatch(r"\..+\.tmp", name)):
                yield Path(folder) / name


def nonfinite_validation(run_dir: Path) -> bool:
    """Whether metrics.jsonl in `run_dir` has a validation number that is NaN or infinite."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if any(key.startswith("val_") and isinstance(value, float) and not math.isfinite(value) for key, value in row.items()):
                return True
    return False


def known_traceback(result: CliResult) -> str | None:
    """The KNOWN_DEFECTS name whose signature the escaped traceback of `result` shows, if any."""
    if result.traceback is None:
        return None
    known = (name for name, signature in KNOWN_TRACEBACKS.items() if name in KNOWN_DEFECTS and signature in result.traceback)
    return next(known, None)


def contract_violations(result: CliResult, outputs: Path, command: str = "train", excuse_known: bool = True) -> list[str]:
    """What breaks the user-facing contract of one `vaegen` run whose output folders are all under `outputs`:
    exit 0, 2, 3 or 4 and never an escaped exception; a failure says `error: ` and one paragraph, no traceback;
    every last.pt and best model left behind loads and is finite, and no temporary file is left beside them.
    `excuse_known`: non-finite checkpoints of a run whose validation loss went non-finite are the known defect
    nonfinite_val_loss_exported (while KNOWN_DEFECTS names it), not a violation."""
    from safetensors.torch import load_file

    from vaegen.checkpoint import load_training_state

    known_crash = excuse_known and known_traceback(result) is not None
    if result.traceback is not None and not known_crash:
        return [f"an exception escaped main() (the user sees a traceback):\n{result.traceback}"]
    problems = []
    if known_crash:
        pass  # what it left behind is still checked below
    elif result.code not in (0, 2, 3, 4):
        problems.append(f"exit code {result.code}, not 0, 2, 3 or 4")
    if result.code != 0 and not known_crash:
        message = result.error()
        if not message or not message.removeprefix("error: ").strip():
            problems.append("a failed run without an `error: ...` message on stderr")
        elif "\n\n" in message or "\n \n" in message:
            problems.append(f"the error is more than one paragraph: {message!r}")
        if "Traceback" in result.stderr:
            problems.append("stderr holds a traceback")
    lasts = list(_files_named(outputs, {"last.pt"}))
    if command == "train" and result.code == 0 and not lasts:
        problems.append("exit 0 but no checkpoints/last.pt was written")
    excused = excuse_known and "nonfinite_val_loss_exported" in KNOWN_DEFECTS and any(
        nonfinite_validation(path.parent) for path in _files_named(outputs, {"metrics.jsonl"}))
    for last in lasts:
        try:
            state = load_training_state(last)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{last} does not load: {exc}")
            continue
        bad = [name for name, tensor in _floating_tensors(state) if not bool(tensor.isfinite().all())]
        if excuse_known and "nonfinite_optimizer_state_saved" in KNOWN_DEFECTS:
            bad = [name for name in bad if not name.startswith("optimizer.")]
        if bad and not excused:
            problems.append(f"{last} holds non-finite tensors: {', '.join(bad[:5])}")
        if state.get("best_value") is not None and not _finite_number(state["best_value"]) and not excused:
            problems.append(f"{last} has best_value {state['best_value']!r}")
    for weights in _files_named(outputs, {"model.safetensors"}):
        try:
            tensors = load_file(str(weights))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{weights} does not load: {exc}")
            continue
        bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not bool(tensor.isfinite().all())]
        if bad and not excused:
            problems.append(f"{weights} holds non-finite tensors: {', '.join(bad[:5])}")
        metrics_path = weights.parent / "metrics.json"
        try:
            value = json.loads(metrics_path.read_text())["value"]
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{metrics_path} has no readable value ({type(exc).__name__}: {exc})")
            continue
        if not _finite_number(value) and not excused:
            problems.append(f"{metrics_path} value is {value!r}, not a finite number")
    leftovers = [str(path) for path in _files_named(outputs, {".tmp"})]
    if leftovers:
        problems.append(f"temporary files left behind: {', '.join(leftovers[:5])}")
    return problems


def check(result: CliResult, outputs: Path, command: str = "train", excuse_known: bool = True) -> None:
    problems = contract_violations(result, outputs, command, excuse_known)
    assert not problems, "\n".join(problems) + "\n\n" + result.describe()


# ---------------------------------------------------------------------------------------
# The example's folder and base config


BASE = {
    "data": {"root": "data", "image_size": 8, "cache_dir": "cache", "val_fraction": 0.25},
    "model": {"latent_dim": 4, "widths": [4]},
    "beta": {"schedule": "constant", "max": 1.0},
    "optim": {"lr": 1e-3},
    "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
    "eval": {"every": 1, "num_grid": 4, "backbone": "none", "num_samples": 2, "kid_subset_size": 2},
    "output": {"logs_dir": "out/logs", "best_dir": "out/best", "run_name": "fuzz", "select": "val_nelbo"},
}


@contextlib.contextmanager
def workdir():
    """A fresh temporary folder for one example (hypothesis runs many examples in one test: no tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="vaegen-fuzz-") as folder:
        yield Path(folder)


def write_config(folder: Path, config: dict | None = None, form: str = "mapping") -> Path:
    """The config file of one example: `config` (default BASE) as YAML, or a FILE_FORMS file that is none, or "long
    name": `config` under a 250-byte file name (the longest a file system holds is 255)."""
    names = {"name too long": "x" * 300 + ".yaml", "long name": "c" * 245 + ".yaml"}
    path = folder / names.get(form, "fuzz.yaml")
    if form in ("mapping", "long name"):
        path.write_text(yaml.safe_dump(config if config is not None else BASE, allow_unicode=True), encoding="utf-8")
    elif form == "folder":
        path.mkdir()
    elif form not in ("missing", "name too long"):
        text = {"empty": "", "comments": "# a config to fill in\n"}.get(form, FILE_FORMS.get(form))
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def merged(base: dict, **sections_: dict) -> dict:
    config = json.loads(json.dumps(base))
    for section, values in sections_.items():
        config.setdefault(section, {}).update(values)
    return config

