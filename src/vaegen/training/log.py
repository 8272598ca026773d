"""What a run says, through `logging`: logger "vaegen" writes above the progress bars and into the run's train.log,
which also keeps the run's Python warnings as "warning: ..." lines."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger("vaegen")
log.setLevel(logging.INFO)
log.propagate = False  # a host application's root handlers would print every epoch line twice
log.addHandler(logging.NullHandler())  # a process that keeps no log (torchrun's others) says nothing
warned = logging.getLogger("vaegen.warnings")  # into train.log only: the warning itself is shown as Python shows it
warned.propagate = False
warned.addHandler(logging.NullHandler())


class AboveTheBars(logging.Handler):
    """Lines on the current stdout (warnings and errors: stderr), above tqdm's progress bars (tqdm.write)."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)


class RunLog(logging.FileHandler):
    """train.log. A failed write (a full disk) is raised to the run, which stops with it, rather than printed as a
    traceback and forgotten, as logging does by default."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise


@contextlib.contextmanager
def kept_in(log_file: Path | None, echo: bool = True):
    """While open, vaegen's messages go to the console (with `echo`) and are appended to `log_file` (None: no file),
    and so are Python's warnings, still shown as they were (a test's pytest.warns still sees them)."""
    files = [RunLog(log_file, encoding="utf-8", delay=True)] if log_file else []
    handlers = ([AboveTheBars()] if echo else []) + files
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    for handler in files:
        warned.addHandler(handler)
    with warnings.catch_warnings():  # restores showwarning on the way out
        show = warnings.showwarning

        def show_and_keep(message, category, filename, lineno, file=None, line=None):
            show(message, category, filename, lineno, file, line)
            warned.warning(f"warning: {message}")

        warnings.showwarning = show_and_keep
        try:
            yield
        finally:
            for handler in handlers:
                log.removeHandler(handler)
                warned.removeHandler(handler)
                handler.close()
