"""Fixtures shared by more than one test file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fuzz_cases import register_profiles

# the property-based harness's hypothesis profiles (ci by default, --hypothesis-profile=long): registered here, before
# the hypothesis plugin reads --hypothesis-profile, which a test module is imported too late for
register_profiles()


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
