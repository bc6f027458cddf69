"""The driver's console: the product's progress and real warnings, once each; Ray's chatter to a log file.

Ray writes to the driver's file descriptors from several places: its C++ core (``core_worker.cc ... E``
lines), its log monitor thread (every worker's stdout and stderr, forwarded), Ray Train's controller
("Requesting resources", "Checkpoint successfully created", "Reporting training result"), and Ray
Train V2 forwards a worker's print a second time through its own logger. None of it is the
product's progress, and a person cannot find the progress in it.

So, while a :class:`Console` is active, file descriptors 1 and 2 of the driver point into a pipe that
one thread drains into the run's log file. Lines that carry :data:`MARK` (what coalora's own Ray
workers print for people) are cut out of whatever prefix Ray put before them and shown on the
terminal, each message once. The driver's own progress goes straight to the terminal through
:meth:`Console.say`. Warnings from coalora and orchestration (``warnings.warn`` or a logger) are
shown once each; everybody else's warnings go to the log. ``verbose`` shows everything.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, TextIO

MARK = "[coalora] "
_OURS = ("coalora", "orchestration")
_RECENT = 256  # how many shown messages are remembered for de-duplication


class _OurLogs(logging.Handler):
    """coalora's and orchestration's log records: WARNING and above to :meth:`Console.warn`, the rest
    (e.g. allocate's INFO on a branch-and-bound node limit) to the log file."""

    def __init__(self, console: "Console") -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.console.warn(record.getMessage())
        else:
            with self.console._lock:
                self.console._write_log(f"{record.name}: {record.getMessage()}")


class Console:
    """See the module docstring. Use as a context manager around the run.

    Args:
        log_path: the local log file (appended to).
        verbose: also show every line that goes to the log.
        stream: the terminal (default: what fd 1 was when the console started).
    """

    def __init__(self, log_path: str | os.PathLike, verbose: bool = False) -> None:
        self.log_path = Path(log_path)
        self.verbose = verbose
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._active = False
        self.term: TextIO = sys.stdout
        self.log: TextIO | None = None

    # ------------------------------------------------------------------ output
    def say(self, message: str) -> None:
        """A line of the product's progress: the terminal and the log."""
        with self._lock:
            self._write_term(message)
            self._write_log(message)

    def warn(self, message: str) -> None:
        """A real warning, shown once per distinct message."""
        with self._lock:
            self._write_log(f"warning: {message}")
            if message in self._warned:
                return
            self._warned.add(message)
            self._write_term(f"warning: {message}")

    def _write_term(self, line: str) -> None:
        self.term.write(line.rstrip("\n") + "\n")
        self.term.flush()

    def _write_log(self, line: str) -> None:
        if self.log is not None:
            self.log.write(line.rstrip("\n") + "\n")
            self.log.flush()

    def _route(self, line: str) -> None:
        """One line that Ray (or anything else in the process) wrote to fd 1 or 2."""
        with self._lock:
            self._write_log(line)
            if MARK not in line:
                if self.verbose:
                    self._write_term(line)
                return
            # Writers share the pipe, so two lines may arrive glued together: one message per mark.
            for part in line.split(MARK)[1:]:
                message = part.rstrip()
                if not message or message in self._recent:  # the same line forwarded a second time
                    continue
                self._recent[message] = None
                if len(self._recent) > _RECENT:
                    self._recent.popitem(last=False)
                self._write_term(message)

    def _pump(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._route(raw.decode("utf-8", "replace"))
            if pending:
                self._route(pending.decode("utf-8", "replace"))

    # ------------------------------------------------------------------ warnings
    def _showwarning(self, message: Any, category: type, filename: str, lineno: int,
                     file: Any = None, line: Any = None) -> None:
        text = f"{category.__name__}: {message}"
        if any(f"{os.sep}{pkg}{os.sep}" in filename for pkg in _OURS):
            self.warn(str(message))
        else:
            with self._lock:
                self._write_log(f"{filename}:{lineno}: {text}")

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> "Console":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "a", buffering=1, encoding="utf-8")
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.term = os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        # Daemon: processes the driver spawns (a local Ray's GCS and raylet) inherit the pipe, so it
        # may never see end-of-file while they live.
        self._thread = threading.Thread(target=self._pump, args=(read_end,), name="coalora-console", daemon=True)
        self._thread.start()
        self._old_showwarning = warnings.showwarning
        warnings.showwarning = self._showwarning  # type: ignore[assignment]
        self._handler = _OurLogs(self)
        self._levels = {}
        for name in _OURS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.INFO)
            logger.addHandler(self._handler)
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._active:
            return
        self._active = False
        for name in _OURS:
            logger = logging.getLogger(name)
            logger.removeHandler(self._handler)
            logger.setLevel(self._levels[name])
        warnings.showwarning = self._old_showwarning  # type: ignore[assignment]
        sys.stdout.flush()
        sys.stderr.flush()
        # Point fd 1 and 2 back at the terminal: a traceback after this reaches the person.
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._thread.join(timeout=1.0)
        with self._lock:
            if self.log is not None:
                self.log.close()
                self.log = None
        self.term.flush()
        self.term = sys.stdout
