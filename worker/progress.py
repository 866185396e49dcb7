"""Following the events file a training process appends metrics to (see worker.runtime).

The file is written by the job, so it is untrusted: each line must be a `Metrics` object within
bounds (shared/events.py). A line that is not becomes a warning for the job's own log, never an
event, and never stops the attempt; past `MAX_WARNINGS` only a count is kept, said once at the end.
A line longer than `MAX_LINE_BYTES` is skipped as it streams by, without waiting for its newline
in memory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from shared.events import Metrics, describe

#: Longest line taken as an event; `report()` writes lines of a few hundred bytes.
MAX_LINE_BYTES = 64 * 1024
#: Bytes read from the file per call at most, so a job writing fast cannot hold up the attempt.
READ_BYTES = 4 * 1024 * 1024
#: Warnings written to the job's log about bad lines; the rest are counted.
MAX_WARNINGS = 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX; Windows has no symlinks a job can make unprivileged
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class EventsFileTail:
    """Returns the valid events in the complete lines appended since the last call; a half-written
    line waits for its end (up to `MAX_LINE_BYTES`)."""

    def __init__(self, path: Path, warn: Callable[[str], None]) -> None:
        self._path = path
        self._warn = warn
        self._offset = 0
        #: The start of a line whose newline has not been written yet.
        self._partial = b""
        #: Inside a line already found too long: its bytes are dropped up to its newline.
        self._skipping = False
        self._line = 0
        self.bad_lines = 0
        #: The last read reached the end of the file (a read stops at `READ_BYTES`).
        self.at_end = True
        #: The file stopped being a plain file: nothing more is read from it.
        self._refused = False

    def read_new(self) -> list[Metrics]:
        data = self._read()
        self._offset += len(data)
        self.at_end = len(data) < READ_BYTES
        out: list[Metrics] = []
        *complete, rest = (self._partial + data).split(b"\n")
        self._partial = b""
        for raw in complete:
            self._line += 1
            if self._skipping:  # the end of the long line found earlier
                self._skipping = False
                continue
            event = self._parse(raw)
            if event is not None:
                out.append(event)
        if self._skipping:
            return out
        if len(rest) > MAX_LINE_BYTES:
            self._bad(self._line + 1, f"longer than {MAX_LINE_BYTES} bytes")
            self._skipping = True
        else:
            self._partial = rest
        return out

    def _read(self) -> bytes:
        """The next bytes of the file, if it is still a plain file of the job's own: the job may
        swap it for a link to a file of the node, or a FIFO that would block the read forever."""
        if self._refused:
            return b""
        try:
            fd = os.open(self._path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        except FileNotFoundError:
            return b""
        except OSError as exc:  # ELOOP: a link
            self._refuse(f"it cannot be opened as a plain file ({exc.strerror})")
            return b""
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self._refuse("it is not a plain file")
                return b""
            fh.seek(self._offset)
            return fh.read(READ_BYTES)

    def _refuse(self, why: str) -> None:
        self._refused = True
        self._warn(f"events file no longer read: {why}")

    def _parse(self, raw: bytes) -> Metrics | None:
        if len(raw) > MAX_LINE_BYTES:
            self._bad(self._line, f"longer than {MAX_LINE_BYTES} bytes")
            return None
        if not raw.strip():
            return None
        try:
            return Metrics.model_validate_json(raw)
        except ValidationError as exc:
            self._bad(self._line, describe(exc))
            return None

    def _bad(self, line: int, why: str) -> None:
        self.bad_lines += 1
        if self.bad_lines <= MAX_WARNINGS:
            self._warn(f"events file line {line} ignored: {why}")

    def finish(self) -> None:
        """Warn, once, of the bad lines beyond `MAX_WARNINGS` that were only counted."""
        unsaid = self.bad_lines - MAX_WARNINGS
        if unsaid > 0:
            self._warn(f"{unsaid} more bad lines in the events file ignored ({self.bad_lines} in all)")
