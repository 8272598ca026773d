"""Fault injection for the reliability suite: faults at the OS boundary, and `vaegen` run in a real process.

Nothing here is a hook in vaegen: the faults replace `os.open`/`os.write` (what the checkpoint writer
calls) or `vaegen.training.loop.train_step` from the outside, in the test process (with monkeypatch) or in a
child process started by `run_vaegen`, which executes a few lines of setup and then `vaegen.apps.cli.main`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cli_error(stderr: str) -> str:
    """The CLI's error paragraph: exactly one line starting with `error:`, and no traceback."""
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def kill_this_process() -> None:
    """kill -9 on ourselves: no finally blocks, no atexit, no flush; exactly what a crash or the OOM killer does."""
    os.kill(os.getpid(), signal.SIGKILL)


class CheckpointWriteFault:
    """Intercepts the bytes written to the temporary files of `last.pt` saves (`.last.pt.*.tmp`).

    Save number `at_save` (1-based) gets `fraction` of the bytes the first save wrote onto the disk
    for real; then `action()` runs in the middle of the write: kill the process, or raise an OSError
    as a full disk does. Every other write goes through untouched.
    """

    def __init__(self, at_save: int, action: Callable[[], None], fraction: float = 0.5):
        assert at_save >= 2, "the first save's size is the yardstick"
        self.at_save, self.action, self.fraction = at_save, action, fraction
        self.sizes: dict[str, int] = {}  # temp file name -> bytes written, in the order the saves began
        self.fds: dict[int, str] = {}
        self.real_open, self.real_write, self.real_close = os.open, os.write, os.close

    def install(self, setattr_: Callable[[object, str, object], None]) -> CheckpointWriteFault:
        """`setattr_` is monkeypatch.setattr in a test, or builtins.setattr in a child process."""
        setattr_(os, "open", self._open)
        setattr_(os, "write", self._write)
        setattr_(os, "close", self._close)
        return self

    @property
    def saves(self) -> int:
        return len(self.sizes)

    def _open(self, path, flags, *args, **kwargs):
        fd = self.real_open(path, flags, *args, **kwargs)
        name = os.path.basename(os.fsdecode(path))
        if name.startswith(".last.pt.") and name.endswith(".tmp"):
            self.fds[fd] = name
            self.sizes.setdefault(name, 0)  # tempfile.mkstemp opens it once, the writer a second time
        return fd

    def _close(self, fd):
        self.fds.pop(fd, None)
        return self.real_close(fd)

    def _write(self, fd, data):
        name = self.fds.get(fd)
        if name is None:
            return self.real_write(fd, data)
        if list(self.sizes).index(name) + 1 == self.at_save:
            first = next(iter(self.sizes.values()))
            budget = int(first * self.fraction) - self.sizes[name]
            if budget < len(data):
                if budget > 0:
                    self.sizes[name] += self.real_write(fd, bytes(memoryview(data).cast("B")[:budget]))
                self.action()
        written = self.real_write(fd, data)
        self.sizes[name] += written
        return written


def kill_at_training_step(step: int) -> None:
    """Replace vaegen.training.loop.train_step so that global step `step` (1-based, counted over epochs) kills the process.

    The kill comes once the previous epoch's checkpoint is on disk: last.pt is written on a background
    thread while the next epoch trains, and a few tiny steps can outrun that write. A kill during the
    write is CheckpointWriteFault's case; this one is a kill in the middle of the training steps.
    """
    import threading

    import vaegen.training.loop
    from vaegen.checkpoint import WRITER_THREAD

    real_step = vaegen.training.loop.train_step
    calls = {"n": 0}

    def step_or_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            for thread in threading.enumerate():
                if thread.name == WRITER_THREAD:
                    thread.join()
            kill_this_process()
        return real_step(*args, **kwargs)

    vaegen.training.loop.train_step = step_or_die


def run_vaegen(
    cwd: Path, args: list[str], setup: str = "", env: dict[str, str | None] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m vaegen ARGS` in a new process, after running `setup` (Python source) in it.
    `env` adds to this process's environment; a None value removes the variable."""
    script = Path(cwd) / "vaegen_with_fault.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\n"
        + textwrap.dedent(setup)
        + "\nimport vaegen.apps.cli\nsys.exit(vaegen.apps.cli.main(sys.argv[1:]))\n"
    )
    child_env = {**os.environ, **(env or {})}
    for key in [key for key, value in child_env.items() if value is None]:
        del child_env[key]
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=cwd, env=child_env, capture_output=True, text=True, timeout=timeout
    )
