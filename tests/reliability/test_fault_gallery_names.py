"""The gallery opens runs by name (`?run=` in its URL): crafted names must not open anything outside its root."""

from __future__ import annotations

import pytest

from vaegen.apps import gallery
from vaegen.errors import CheckpointError


@pytest.fixture
def layout(tmp_path):
    """root/good/ is a model folder; outside/secret/ is one too, but outside the root."""
    root, outside = tmp_path / "a" / "b" / "root", tmp_path / "outside" / "secret"
    for folder in (root / "good", outside, tmp_path / "a"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / gallery.WEIGHTS).write_bytes(b"weights")  # open_run needs only the file to exist
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_a_run_inside_the_root_opens(layout):
    root, _ = layout
    assert gallery.open_run(root, "good") == (root / "good").resolve()


@pytest.mark.parametrize("name", ["../..", "../../../outside/secret", "good/../../.."])
def test_parent_directory_names_are_refused(layout, name):
    root, _ = layout
    with pytest.raises(CheckpointError, match=rf"{name!r} is outside the checkpoint root {root.resolve()}"):
        gallery.open_run(root, name)


def test_an_absolute_path_is_refused(layout):
    root, outside = layout
    with pytest.raises(CheckpointError, match="is outside the checkpoint root"):
        gallery.open_run(root, str(outside))


def test_a_symlink_out_of_the_root_is_refused_and_not_listed(layout):
    root, _ = layout
    with pytest.raises(CheckpointError, match=r"'escape' is outside the checkpoint root"):
        gallery.open_run(root, "escape")
    with pytest.raises(CheckpointError, match="is outside the checkpoint root"):
        gallery.read_run(root, "escape")
    assert [run.name for run in gallery.find_runs(root)] == ["good"]
