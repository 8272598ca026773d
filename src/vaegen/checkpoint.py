"""Writing and reading checkpoints without ever losing one or running code from one.

Every write goes to a fsynced temporary file renamed over the target (a kill leaves the old file or the new
one); a write the disk refuses raises `StorageError`. Model weights are safetensors; the training state is a
`torch.save` of plain tensors read back with `weights_only=True`, which refuses pickled objects.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from vaegen.errors import CheckpointError, VaegenError


class StorageError(CheckpointError, OSError):
    """The disk refused a write; nothing was replaced. An OSError, so callers whose writes are optional catch it."""


_REFUSALS = {  # errno -> what the disk said, in words
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file is larger than this file system or the process's file-size limit allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission is denied",
    errno.EPERM: "permission is denied",
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _REFUSALS[errno.EDQUOT] = "the disk quota is exceeded"


def storage_error(path: Path, exc: BaseException) -> StorageError | None:
    """A StorageError for `path` if `exc` (or an exception it was raised from) is the disk refusing a write."""
    code = _refusal_errno(exc)
    if code is None:
        return None
    error = StorageError(
        f"could not write {path}: {_REFUSALS[code]} ([Errno {code}] {os.strerror(code)}). Nothing was replaced: "
        f"earlier files and checkpoints are intact, and no partial file is left. Free space on (or fix) the disk "
        f"holding {Path(path).parent}, or write elsewhere (output.logs_dir and output.best_dir for runs, "
        f"data.cache_dir for decoded images); then continue a training run with `vaegen train --resume RUN_DIR`."
    )
    error.errno = code
    return error


def _refusal_errno(exc: BaseException) -> int | None:
    # torch.save reports a failed write as a RuntimeError raised while handling the OSError, and
    # safetensors as a SafetensorError whose text ends in "(os error 28)": follow the chain, read the text
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
        if code is None:
            match = re.search(r"\(os error (\d+)\)", str(exc))
            code = int(match.group(1)) if match else None
        if code in _REFUSALS:
            return code
        exc = exc.__cause__ or exc.__context__
    return None


def file_in_the_way(folder: Path) -> Path | None:
    """`folder` or the first of its parents that exists as a file, which no folder can be made under."""
    return next((p for p in [Path(folder), *Path(folder).parents] if p.exists() and not p.is_dir()), None)


def make_output_folder(folder: Path, setting: str) -> None:
    """Create `folder`, or say why not; `setting` is how the user names it ("output.logs_dir", or an option "--out")."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = storage_error(folder, exc)
        reason = _REFUSALS[why.errno] if why is not None else (exc.strerror or str(exc)).lower()
        clash = file_in_the_way(folder)
        if clash is not None:
            reason = f"{clash} is a file, not a folder"
        how = f"{setting} DIR" if setting.startswith("--") else f"--set {setting}=DIR"
        raise StorageError(f"cannot create the folder {folder}: {reason}. Point {setting} at a folder you can write to ({how}).") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp), then rename tmp over path once it is on disk (in `written_together`: when that block ends)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        umask = os.umask(0)  # read it back: os has no getter
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what any new file would get
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        group = getattr(_together, "pending", None)
        if group is not None:
            group.append((tmp, path))
            return
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        refused = storage_error(path, exc) if isinstance(exc, Exception) else None
        if refused is not None:
            raise refused from exc
        raise
    _fsync_folder(path.parent)


# the files of this thread's `written_together` block: (temporary file, its path), or (None, a path to remove)
_together = threading.local()


@contextlib.contextmanager
def written_together():
    """The block's `atomic_write`s (and `discard`s) land together, in order, once it ends; an error, a kill or Ctrl+C
    inside it leaves every file as it was. Per thread: the background writer's files are not held back."""
    pending: list[tuple[Path | None, Path]] = []
    _together.pending = pending
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    finally:
        _together.pending = None
    for tmp, path in pending:
        if tmp is None:
            path.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    for folder in {path.parent for _, path in pending}:
        _fsync_folder(folder)


def discard(path: Path) -> None:
    """Remove `path`; inside `written_together`, when its files land."""
    group = getattr(_together, "pending", None)
    if group is None:
        Path(path).unlink(missing_ok=True)
    else:
        group.append((None, Path(path)))


def _fsync_folder(folder: Path) -> None:
    """A rename is durable once its folder is synced (where the platform lets a folder be opened)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_training_state(path: Path, state: dict) -> None:
    path = Path(path)
    # a process killed while saving leaves its temporary file behind; one run writes one last.pt, so clear them
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    atomic_write(path, lambda tmp: _torch_save(state, tmp))


def host_copy(value):
    """`value` with every tensor copied to host memory: a snapshot the training step can no longer change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(item) for item in value)
    return value


WRITER_THREAD = "vaegen-checkpoint-writer"


class BackgroundWriter:
    """Runs one write at a time on a thread, so the training loop pays only for the snapshot (`host_copy`) it hands
    over. `submit` waits for the write before it; `wait` raises that write's error in the caller's thread."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # handed to the training thread by wait()
                self._error = exc

        # not a daemon: an interpreter that is shutting down still lets the write finish
        self._thread = threading.Thread(target=run, name=WRITER_THREAD)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A write is still going."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error if it failed."""
        if (error := self.join()) is not None:
            raise error

    def join(self) -> BaseException | None:
        """Block until the write in flight ends; return its error rather than raise it (another may be on its way)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        return error


def _torch_save(state: dict, tmp: Path) -> None:
    """torch.save through os.write: given a path, torch reports a full disk as "unexpected pos" without the errno."""
    fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0))
    try:
        torch.save(state, _FdWriter(fd))
    finally:
        os.close(fd)


class _FdWriter:
    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):  # a short write is followed by the call that raises the OSError
            done += os.write(self.fd, view[done:])
        return done

    def flush(self) -> None:  # nothing is buffered here; atomic_write fsyncs the file
        pass


# what every last.pt holds (optional parts: scaler, best_*, ema, adversary)
TRAINING_STATE_KEYS = ("epoch", "model", "optimizer", "rng", "classes")


def load_training_state(path: Path, mmap: bool = False) -> dict:
    """The training state in `path`, checked; `mmap` maps the tensors instead of reading them (to look at the epoch)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}; start a new run without --resume.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        reason = (str(exc).strip() or "no details").splitlines()[0]  # an empty file raises with no text
        raise CheckpointError(
            f"{path} cannot be loaded safely ({type(exc).__name__}: {reason}). It is either damaged or holds pickled "
            f"objects, which vaegen never executes. Resume from another run, or start a new run without --resume."
        ) from exc
    missing = [key for key in TRAINING_STATE_KEYS if key not in state] if isinstance(state, dict) else None
    if missing != []:
        held = f"a {type(state).__name__}" if missing is None else f"no {', '.join(missing)}"
        raise CheckpointError(
            f"{path} is not a vaegen training state (it holds {held}); `vaegen train` writes checkpoints/last.pt with "
            f"{', '.join(TRAINING_STATE_KEYS)} and more. Resume a run that vaegen wrote, or start a new run without --resume."
        )
    return state


def save_model(path: Path, model: nn.Module, metadata: dict[str, object]) -> None:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    meta = {key: json.dumps(value) for key, value in metadata.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_model_metadata(path: Path) -> dict[str, object]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(_unreadable(path, exc)) from exc
    try:
        return {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as exc:  # other tools store plain strings (e.g. {"format": "pt"})
        raise CheckpointError(
            f"{path} is a safetensors file but not a vaegen model: its metadata is not vaegen's JSON ({exc}). "
            f"Open a folder that `vaegen train` wrote to best_models/<run>/."
        ) from exc


def load_model_weights(model: nn.Module, path: Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model weights at {path}.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(_unreadable(path, exc)) from exc
    load_state_checked(model, tensors, str(path))


def load_state_checked(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict, after checking that `tensors` were made by a model of the same shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{name} is {tuple(tensors[name].shape)} in the checkpoint but {tuple(tensor.shape)} in the model"
             for name, tensor in expected.items() if name in tensors and tensors[name].shape != tensor.shape]
    details = ["shape mismatch: " + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else "")] if wrong else []
    details += [f"{len(missing)} parameter(s) missing (e.g. {missing[0]})"] if missing else []
    details += [f"{len(unexpected)} unexpected parameter(s) (e.g. {unexpected[0]})"] if unexpected else []
    if details:
        raise CheckpointError(
            f"{source} was saved by a different model than the config describes: {'; '.join(details)}. "
            f"Use the config the checkpoint was trained with (its config.yaml), or train a new model."
        )
    model.load_state_dict(tensors)


def _unreadable(path: Path, exc: Exception) -> str:
    return (f"{path} is not a readable safetensors file ({exc}); it may be truncated or not a vaegen checkpoint. "
            f"Retrain, or restore the file from a copy.")


def read_json_object(path: Path, error: type[VaegenError] = CheckpointError) -> dict:
    """A JSON object vaegen wrote (metrics.json, sweep.json, params.json), refused as `error` when it cannot be read
    or holds anything but an object, so a hand-edited file names itself instead of failing later."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not readable JSON ({exc}); it should be what vaegen wrote there.") from exc
    if not isinstance(value, dict):
        raise error(f"{path} holds a JSON {type(value).__name__}, not the object vaegen writes there.")
    return value
