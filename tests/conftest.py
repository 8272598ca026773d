"""Fixtures shared by more than one test file (plain constants and readers: helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from fuzz_cases import register_profiles
from helpers import EXPORT_PROTOCOL, SAMPLE, SAMPLE_CLASSES, CountingBackbone, SecondBackbone

import vaegen.evaluation.backbones

# the property-based harness's hypothesis profiles (ci by default, --hypothesis-profile=long): registered here, before
# the hypothesis plugin reads --hypothesis-profile, which a test module is imported too late for
register_profiles()

# Ray's token file under ~/.ray is shared by everything on the machine; a test cluster needs none
os.environ["RAY_AUTH_MODE"] = "disabled"

# pytest-xdist runs one worker per core: each worker (and the commands it starts) computes on one thread, so two
# workers share two cores instead of fighting over four threads
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _write_yaml(folder: Path, name: str, content: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(content))
    return path


def _tiny_config(tmp_path: Path, **sections) -> Path:
    config = {
        "data": {"root": str(SAMPLE), "image_size": 16, "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2},
        "model": {"latent_dim": 8, "widths": [8, 16]},
        "beta": {"schedule": "warmup", "max": 1.0, "warmup": 2},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 3, "batch_size": 32, "device": "cpu"},
        "eval": {"every": 2, "num_grid": 12, "backbone": "none"},
        "output": {"logs_dir": str(tmp_path / "logs"), "best_dir": str(tmp_path / "best"), "run_name": "tiny", "select": "val_nelbo"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return _write_yaml(tmp_path, "tiny.yaml", config)


@pytest.fixture(scope="session")
def tiny_config():
    """tiny_config(folder, **sections) writes folder/tiny.yaml, a config that trains in seconds (the bundled sample
    at 16 px, a small network, 3 epochs, run `tiny` under folder/logs and folder/best), and returns its path.
    Each keyword updates that section: tiny_config(tmp_path, train={"epochs": 1})."""
    return _tiny_config


@pytest.fixture(scope="session")
def fid_config(tiny_config):
    """fid_config(folder, eval=None, **sections): tiny_config scored by FD every epoch on 40 samples, selected by it."""

    def write(tmp_path: Path, eval: dict | None = None, **sections) -> Path:
        evaluation = {"every": 1, "backbone": "efficientnet-lite0", "num_samples": 40, "batch_size": 20, "kid_subset_size": 20}
        return tiny_config(tmp_path, eval={**evaluation, **(eval or {})}, output={"select": "fid"}, **sections)

    return write


@pytest.fixture(scope="session")
def tiny_sweep():
    """tiny_sweep(folder, space, **tune) writes folder/sweep.yaml, a sweep `tiny` over a base config that trains in
    seconds (16 px, a small network, 2 epochs, FD every epoch) and returns its path; keywords go to its tune section."""

    def write(tmp_path: Path, space: dict, **tune) -> Path:
        base = {
            "data": {"root": str(SAMPLE), "image_size": 16, "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2},
            "model": {"latent_dim": 8, "widths": [8, 16]},
            "optim": {"lr": 1e-3},
            "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
            "eval": {"every": 1, "num_grid": 12, "backbone": "efficientnet-lite0", "num_samples": 32, "reference": "val"},
            "output": {"logs_dir": str(tmp_path / "logs"), "best_dir": str(tmp_path / "best"), "select": "fid"},
        }
        sweep = {
            "base": base,
            "space": space,
            "tune": {"name": "tiny", "num_samples": 3, "max_concurrent": 2, "grace_period": 1, "startup_trials": 2,
                     "resources": {"cpu": 1}, **tune},
        }
        return _write_yaml(tmp_path, "sweep.yaml", sweep)

    return write


def _make_run(best_dir: Path, name: str, conditional: str = "none", channels: int = 3, fid: float | None = None,
              resize: str = "center_crop", image_size: int | list[int] = 16) -> Path:
    # imported here, not above: every pytest run loads conftest.py, and vaegen.training.loop takes seconds to import
    from vaegen.config import config_from_dict
    from vaegen.training.accel import resolve_step_options
    from vaegen.training.loop import RunPaths, export_best
    from vaegen.training.run import build_run

    config = config_from_dict({
        "data": {"root": str(SAMPLE), "image_size": image_size, "channels": channels, "resize": resize},
        "model": {"latent_dim": 8, "widths": [8, 16], "conditional": conditional},
        "train": {"epochs": 7, "batch_size": 32, "seed": 3},
        "eval": {"backbone": "none" if fid is None else "efficientnet-lite0"},
        "output": {"select": "val_nelbo"},
    })
    torch.manual_seed(len(name))
    device = torch.device("cpu")
    run = build_run(config, device, resolve_step_options(config.train, config.data, device, 1), SAMPLE_CLASSES)
    run.criterion = "val_nelbo"
    row = {"epoch": 5, "val_nelbo": 123.456, "val_recon": 100.0}
    if fid is not None:
        row["fd_efficientnet_lite0"] = fid
    paths = RunPaths(name, best_dir.parent / "logs" / name, best_dir / name)
    protocol = {**EXPORT_PROTOCOL, "image_size": list(config.data.image_size)} if fid is not None else None
    export_best(paths, run, row, protocol, torch.zeros(3, 18, 18))
    return paths.best_dir


@pytest.fixture(scope="session")
def make_run():
    """make_run(best_dir, name, conditional="none", channels=3, fid=None, resize="center_crop", image_size=16) writes
    best_dir/<name>/ as `vaegen train` exports it, from an untrained 16 px model (no training: fast), and returns it.
    With fid=..., metrics.json carries that FD and helpers.EXPORT_PROTOCOL."""
    return _make_run


@pytest.fixture
def counting_backbone(monkeypatch):
    """Every network vaegen loads is a CountingBackbone (helpers.py); returns the class (images_seen starts at 0)."""
    CountingBackbone.images_seen = 0
    monkeypatch.setattr(vaegen.evaluation.backbones, "load_backbone", lambda name, device="cpu", weights=None: CountingBackbone())
    monkeypatch.setattr(vaegen.evaluation.backbones, "resolve_backbone_name", lambda name, weights=None: "efficientnet-lite0")
    return CountingBackbone


@pytest.fixture
def two_backbones(monkeypatch):
    """efficientnet-lite0 loads as a CountingBackbone and dinov2 as a SecondBackbone: two fixed random feature maps.
    Returns CountingBackbone, whose images_seen (both networks' images) starts at 0."""
    networks = {"efficientnet-lite0": CountingBackbone, "dinov2": SecondBackbone}
    monkeypatch.setattr(vaegen.evaluation.backbones, "load_backbone", lambda name, device="cpu", weights=None: networks[name]())
    CountingBackbone.images_seen = 0
    return CountingBackbone


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def pickle_bomb(tmp_path):
    """write(path) saves a torch file whose unpickling would create `marker`; assert it never exists."""
    marker = tmp_path / "pwned"

    def write(path: Path) -> Path:
        torch.save({"weight": torch.zeros(1), "payload": _RunsCodeWhenUnpickled(marker)}, path)
        return path

    write.marker = marker
    return write


@pytest.fixture
def register_for_this_test():
    """`register(name, builder, family)`: a model name the config accepts and the loop trains, for one test only."""
    from vaegen.config import MODEL_NAMES
    from vaegen.models import FAMILIES, MODELS, register_model

    names = []

    def register(name, builder, family):
        names.append(name)
        return register_model(name, family)(builder)

    yield register
    for name in names:
        MODELS.pop(name, None)
        FAMILIES.pop(name, None)
        MODEL_NAMES.discard(name)


@pytest.fixture
def default_cache_elsewhere(tmp_path, monkeypatch):
    """$VAEGEN_CACHE in tmp_path: the default cache of a config without data.cache_dir lands there, not in ~/.cache."""
    monkeypatch.setenv("VAEGEN_CACHE", str(tmp_path / "env-cache"))


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (--dist loadgroup), the tests that start Ray run on one worker, one after another: two local
    Ray clusters at once would compete for the machine's cores and the sweeps' timings."""
    for item in items:
        if item.path.name == "test_tune.py" or "tiny_sweep" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))
