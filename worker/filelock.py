"""A portable exclusive, non-blocking lock on a file; the OS drops it when the holder dies."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import IO

if sys.platform == "win32":
    import msvcrt

    def _lock(fh: IO[bytes]) -> None:
        # A lock on the first byte; Windows allows locking past the end of an empty file.
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(fh: IO[bytes]) -> None:
        # Windows frees a closed handle's locks only "eventually"; unlocking first frees it now.
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fh: IO[bytes]) -> None:
        # flock, not lockf: it belongs to this open file, so two threads of one process exclude each
        # other too (the threads pool runs several attempts in one process).
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fh: IO[bytes]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class FileLock:
    """`try_acquire()` never waits; `with lock:` acquires unless held (BlockingIOError when another
    holder has it) and releases at the end.

    The handle is not inherited by child processes (Python's default), so a training process that
    outlives its worker does not keep the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it; False at once if someone does (this object included)."""
        if self._fh is not None:
            return False
        fh = self.path.open("a+b")
        try:
            _lock(fh)
        except OSError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with fh, contextlib.suppress(OSError):  # closing the handle drops the lock all the same
            _unlock(fh)

    def __enter__(self) -> FileLock:
        if not self.held and not self.try_acquire():
            raise BlockingIOError(f"{self.path} is locked")
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
