"""A local cache of datasets keyed by their S3 ETag: a dataset is downloaded once per version."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.errors import DatasetMissing, NotFound
from shared.schemas import DatasetRef
from shared.storage import ArtifactStore


@dataclass(frozen=True)
class Fetched:
    name: str
    path: Path
    cached: bool
    size: int


class DatasetCache:
    def __init__(self, store: ArtifactStore, root: Path) -> None:
        self._store = store
        self._root = root

    def fetch(self, ref: DatasetRef) -> Fetched:
        try:
            info = self._store.stat(ref.key)
        except NotFound:
            raise DatasetMissing(f"dataset '{ref.name}' is missing from storage ({ref.key})") from None
        # The ETag names the version: a re-uploaded dataset lands in a new place, old jobs keep theirs.
        slot = self._root / hashlib.sha256(ref.key.encode()).hexdigest()[:16] / info.etag
        path = slot / ref.name
        if path.exists() and path.stat().st_size == info.size:
            return Fetched(ref.name, path, True, info.size)
        self._store.download(ref.key, path)
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
