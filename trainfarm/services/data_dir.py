"""One farm per data directory: a second `trainfarm standalone` on a directory that a running farm
holds would start its worker against the first farm's Redis (the ports are kept in the directory)
and its database, so it is refused.

The hold is an OS lock on `farm.lock` (`worker.filelock`: flock on Linux and macOS, msvcrt on
Windows), so a farm that crashed or was killed frees it with its process; the holder's pid is
written beside it in `farm.pid` (a file of its own: Windows would not let another process read a
locked byte) for the message.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

from worker.filelock import FileLock


class DataDirBusy(RuntimeError):
    """Another running farm holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._lock = FileLock(self.data_dir / "farm.lock")
        self._pid_file = self.data_dir / "farm.pid"

    def acquire(self) -> None:
        """Hold the directory, or raise `DataDirBusy` naming the farm that does."""
        # Owner-only: it holds the database, the keys and every service's files. One made by an
        # older trainfarm (0755) is tightened too, when it is ours.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.name == "posix" and self.data_dir.stat().st_uid == os.getuid():
            self.data_dir.chmod(0o700)
        if not self._lock.try_acquire():
            raise DataDirBusy(
                f"data directory {self.data_dir} is in use by another running farm "
                f"(pid {self.holder() or 'unknown'}); stop it first or pass another --data-dir"
            )
        self._pid_file.write_text(f"{os.getpid()}\n")

    def holder(self) -> int | None:
        """The pid the holding farm wrote; None if it has not written it yet."""
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._lock.held:
            with contextlib.suppress(OSError):  # the lock, not the file, is what counts
                self._pid_file.unlink()
        self._lock.release()

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
