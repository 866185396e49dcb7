"""A local cache of datasets keyed by their S3 ETag: a dataset is downloaded once per version, and
the cache kept under its size limit (worker/cache_budget.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.errors import DatasetMissing, NotFound
from shared.schemas import DatasetRef
from shared.storage import ArtifactStore
from worker.cache_budget import Pins, dataset_budget


@dataclass(frozen=True)
class Fetched:
    name: str
    path: Path
    cached: bool
    size: int


class DatasetCache:
    """The node's datasets.

    :param store: Where datasets live.
    :param root: The cache folder, shared by the worker processes of the machine.
    :param max_bytes: Its size limit; None: a share of its disk (`cache_budget.DATASET_DISK_SHARE`).
    """

    def __init__(self, store: ArtifactStore, root: Path, max_bytes: int | None = None) -> None:
        self._store = store
        self.budget = dataset_budget(root, max_bytes)

    def fetch(self, ref: DatasetRef, pins: Pins | None = None) -> Fetched:
        """The cached file of `ref`, downloaded first if needed; `pins` keeps it cached until released
        (without, only during the call)."""
        try:
            info = self._store.stat(ref.key)
        except NotFound:
            raise DatasetMissing(f"dataset '{ref.name}' is missing from storage ({ref.key})") from None
        # The ETag names the version: a re-uploaded dataset lands in a new place, old jobs keep theirs.
        # Only name-safe characters of it: an ETag (hex, `-N` for multipart) must not climb out of the cache.
        version = re.sub(r"[^A-Za-z0-9_-]", "_", info.etag)
        key = f"{hashlib.sha256(ref.key.encode()).hexdigest()[:16]}/{version}"
        with contextlib.ExitStack() as stack:
            if pins is None:
                pins = stack.enter_context(Pins(f"dataset fetch in pid {os.getpid()}"))
            # Pinned before it is looked at, so no other process evicts it between the check and the use.
            path = pins.hold(self.budget, key) / ref.name
            if path.exists() and path.stat().st_size == info.size:
                return Fetched(ref.name, path, True, info.size)
            self._store.download(ref.key, path)
            self.budget.added(key)
            return Fetched(ref.name, path, False, info.size)

    @staticmethod
    def place(fetched: Fetched, data_dir: Path) -> None:
        """Expose a cached file in a job's data directory without copying where the disk allows."""
        target = data_dir / fetched.name
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.link(fetched.path, target)
        except OSError:  # another file system, or links not allowed: fall back to a copy
            shutil.copyfile(fetched.path, target)
        if os.name == "posix":  # on Windows a read-only file could not be deleted with its attempt
            # Read-only for everyone, readable by a job run as another user (TRAINFARM_JOB_USER),
            # whatever the worker's umask: a link shares the cache's file, which no job may change.
            os.chmod(target, 0o444)
