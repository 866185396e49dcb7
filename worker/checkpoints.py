"""A job's checkpoints in S3 (`checkpoints/<job>/`): restored into each new attempt, synced while it runs."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from shared.events import ArtifactStored
from shared.storage import ArtifactStore
from worker.reporter import AttemptReporter
from worker.uploads import put_file, regular_files, storage_retry

log = logging.getLogger(__name__)

#: The name trainfarm's runtime and Lightning give the newest checkpoint.
LAST = "last.ckpt"


class CheckpointSync:
    def __init__(self, store: ArtifactStore, reporter: AttemptReporter, job_id: int, local: Path) -> None:
        self._store = store
        self._reporter = reporter
        self._prefix = f"checkpoints/{job_id}/"
        self._local = local
        self._synced: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    @storage_retry
    def restore(self) -> str | None:
        """Put the newest checkpoint of earlier attempts where this attempt will look for it."""
        remote = {info.key.removeprefix(self._prefix): info for info in self._store.list(self._prefix)}
        if LAST not in remote:
            return None
        target = self._local / LAST
        self._store.download(remote[LAST].key, target)
        stat = target.stat()
        self._synced[LAST] = (stat.st_mtime_ns, stat.st_size)
        return f"{LAST} ({stat.st_size} bytes)"

    def sync(self) -> int:
        """Upload checkpoint files that are new or changed since the last sync."""
        with self._lock:
            count = 0
            for path in regular_files(self._local):
                name = path.relative_to(self._local).as_posix()
                if name.startswith(".") or ".tmp" in name:  # a save in progress; its rename comes later
                    continue
                stat = path.stat()
                if self._synced.get(name) == (stat.st_mtime_ns, stat.st_size):
                    continue
                info = put_file(self._store, self._prefix + name, path, self._local)
                self._synced[name] = (stat.st_mtime_ns, stat.st_size)
                self._reporter.report(
                    ArtifactStored(
                        name=f"checkpoints/{name}", key=info.key, size=info.size, sha256=info.sha256
                    )
                )
                count += 1
            return count


class PeriodicSync(threading.Thread):
    def __init__(self, sync: CheckpointSync, interval: float) -> None:
        super().__init__(name="checkpoint-sync", daemon=True)
        self._sync = sync
        self._interval = interval
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            try:
                self._sync.sync()
            except Exception as exc:  # the next round, or the final sync, tries again
                log.warning("checkpoint upload failed: %s", exc)

    def stop(self) -> None:
        self._halt.set()
        self.join()
