"""Size limits on the node's caches (datasets, code bundles): least recently used entries leave first,
entries a running attempt holds never.

Several worker processes of one machine share a cache folder, so the bookkeeping lives on disk, under
`<root>/.budget/`, and is safe across processes:

- `lock`: an OS file lock held while pins are written and entries removed, never while downloading;
- `pins/<token>.lock` and `pins/<token>.json`: one pair per attempt and cache. The attempt's process
  holds the lock file for as long as it uses the entries the record names; a pin whose lock can be
  taken belongs to a process that died (the OS dropped its lock) and is removed, not obeyed;
- last use: each entry's own modification time, set whenever an attempt pins it (no index that could
  fall out of step with the files).

An entry is a path `depth` levels below the root (a dataset version's folder, a bundle archive),
together with the `.<name>.<id>.part` files a download writes beside it before renaming into place.
A download pins its entry before it starts, so a partial entry is never evicted; it is never served
either, because only the rename makes the file appear under its name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import RetryableError
from shared.settings import Settings
from worker.filelock import FileLock

log = logging.getLogger(__name__)

#: Unset limits: these shares of the file system that holds each cache. Datasets are the bulk of a
#: node's disk use; bundles are small and a few per project are enough.
DATASET_DISK_SHARE = 0.25
CODE_DISK_SHARE = 0.05
#: How long a pin or an eviction waits for another process's bookkeeping; it takes milliseconds
#: unless the disk hangs, and then the attempt is better retried elsewhere.
LOCK_WAIT_SECONDS = 120.0
LOCK_POLL_SECONDS = 0.01
#: Cache layouts: datasets are `<key hash>/<etag>/<name>`, bundles `<digest>.tar.gz`.
DATASET_DEPTH = 2
CODE_DEPTH = 1
BOOKKEEPING = ".budget"


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    last_use_ns: int
    #: The entry and its partial downloads, as strings: a scan of a large cache builds no Path objects.
    paths: tuple[str, ...]


class CacheBudget:
    """A size limit on one cache folder.

    :param root: The cache folder; its entries are the paths `depth` levels below it.
    :param max_bytes: The limit. Exceeded only while attempts hold more than it.
    :param depth: How deep the entries lie (files found higher up are entries too: an older layout).
    :param label: How logs name the cache.
    """

    def __init__(self, root: Path, max_bytes: int, depth: int, label: str) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.depth = depth
        self.label = label
        self.pins_dir = root / BOOKKEEPING / "pins"
        self.trash_dir = root / BOOKKEEPING / "trash"

    def path(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the bookkeeping, across threads and processes."""
        self.pins_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / BOOKKEEPING / "lock")
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not lock.try_acquire():
            if time.monotonic() > deadline:
                raise RetryableError(f"the {self.label} stayed locked for {LOCK_WAIT_SECONDS:.0f}s")
            time.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            lock.release()

    def touch(self, key: str) -> None:
        """Mark `key` as used now; an entry not there yet (about to be downloaded) gets its mark later."""
        now = time.time_ns()
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(key), ns=(now, now))

    def added(self, key: str) -> list[str]:
        """A download of `key` finished: mark its use and make room for it; the keys evicted."""
        try:
            return self._added(key)
        finally:
            self.empty_trash()

    def _added(self, key: str) -> list[str]:
        with self.locked():
            self.touch(key)
            entry = self._entry_of(key)
            size = entry.size if entry else 0
            if size > self.max_bytes:
                log.warning(
                    "%s: %s is %d bytes, more than the whole limit of %d; kept while in use, evicted first after",
                    self.label,
                    key,
                    size,
                    self.max_bytes,
                )
            return self._evict()

    def evict(self) -> list[str]:
        """Remove least recently used entries no attempt holds until the cache fits; the keys removed."""
        try:
            with self.locked():
                return self._evict()
        finally:
            self.empty_trash()

    def empty_trash(self) -> None:
        """Delete what eviction set aside. Outside the lock: deleting a large dataset can take
        minutes, and every attempt on the machine (and the heartbeat) waits for the lock."""
        try:
            items = list(os.scandir(self.trash_dir))
        except FileNotFoundError:
            return
        for item in items:
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path, ignore_errors=True)  # another process may empty it too
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)

    def entries(self) -> list[Entry]:
        """What the cache holds now, partial downloads included under the name they will have."""
        return self._scan(str(self.root), "", self.depth)

    def usage(self) -> dict[str, int]:
        """Bytes and entries held, the limit, and how many entries live attempts pin."""
        with self.locked():  # a pin's lock is probed: never while its owner is still taking it
            pinned = self._pinned()
            entries = self.entries()
        return {
            "bytes": sum(e.size for e in entries),
            "entries": len(entries),
            "max_bytes": self.max_bytes,
            "pinned": sum(1 for e in entries if pinned is None or e.key in pinned),
        }

    def _evict(self) -> list[str]:
        pinned = self._pinned()
        if pinned is None:
            return []
        entries = self.entries()
        total = sum(e.size for e in entries)
        # An entry over the whole limit goes first: it was kept only for the attempt that needed it.
        candidates = sorted(
            (e for e in entries if e.key not in pinned),
            key=lambda e: (e.size <= self.max_bytes, e.last_use_ns),
        )
        removed = []
        for entry in candidates:
            if total <= self.max_bytes:
                break
            try:
                self._remove(entry)
            except OSError as exc:  # a file some other program holds open (Windows): try the next
                log.warning("%s: could not evict %s: %s", self.label, entry.key, exc)
                continue
            total -= entry.size
            removed.append(entry.key)
        if removed:
            log.info("%s: evicted %s; %d of %d bytes used", self.label, removed, total, self.max_bytes)
        if total > self.max_bytes:
            log.warning(
                "%s: %d bytes used, over the limit of %d, while running attempts hold their entries",
                self.label,
                total,
                self.max_bytes,
            )
        return removed

    def _pinned(self) -> set[str] | None:
        """Keys live attempts hold, dead processes' pins removed; None when a live pin cannot be
        read, so nothing may go. Under the lock only."""
        keys: set[str] = set()
        try:
            locks = sorted(self.pins_dir.glob("*.lock"))
        except FileNotFoundError:
            return keys
        for lock_path in locks:
            record = lock_path.with_suffix(".json")
            probe = FileLock(lock_path)
            if probe.try_acquire():  # no live holder: the OS dropped the lock of a dead process
                probe.release()
                record.unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)
                continue
            try:
                keys.update(json.loads(record.read_text())["keys"])
            except FileNotFoundError:  # created by a pin that has not written its record yet
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: unreadable pin %s (%s): evicting nothing", self.label, record, exc)
                return None
        return keys

    def _scan(self, folder: str, prefix: str, depth: int) -> list[Entry]:
        """The entries `depth` levels below `folder`, whose key starts with `prefix`."""
        try:
            children = sorted(os.scandir(folder), key=lambda c: c.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found: list[Entry] = []
        here: dict[str, list[os.DirEntry[str]]] = {}
        for child in children:
            if not prefix and child.name == BOOKKEEPING:
                continue
            if depth > 1 and child.is_dir(follow_symlinks=False):
                found.extend(self._scan(child.path, f"{prefix}{child.name}/", depth - 1))
            else:  # an entry, or (above the entry depth) the leftover of an older layout: one too
                here.setdefault(_entry_name(child.name), []).append(child)
        for name, items in here.items():
            try:
                main = next((c for c in items if c.name == name), items[0])
                stamp = main.stat(follow_symlinks=False).st_mtime_ns
                size = sum(_size(c) for c in items)
            except FileNotFoundError:  # removed while we looked
                continue
            found.append(Entry(prefix + name, size, stamp, tuple(c.path for c in items)))
        return found

    def _entry_of(self, key: str) -> Entry | None:
        parent = key.rpartition("/")[0]
        folder = str(self.root / parent) if parent else str(self.root)
        prefix = f"{parent}/" if parent else ""
        return next((e for e in self._scan(folder, prefix, 1) if e.key == key), None)

    def _remove(self, entry: Entry) -> None:
        """Out of the cache at once, by a rename into the trash; `empty_trash` deletes it later."""
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        for path in entry.paths:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, self.trash_dir / uuid.uuid4().hex)
        # Folders left empty above the entry (a dataset's key folder once its last version left).
        parent = self.path(entry.key).parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


class Pins:
    """The cache entries one attempt uses, held until it ends: `with Pins(owner) as pins: ...`.

    On release the caches are trimmed again: what the attempt held may have kept them over their limit.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._held: dict[Path, _Pin] = {}

    def hold(self, budget: CacheBudget, key: str) -> Path:
        """Pin `key` (present or about to be downloaded) and mark its use; its path."""
        with budget.locked():
            pin = self._held.get(budget.root)
            if pin is None:
                pin = self._held[budget.root] = _Pin(budget, self.owner)
            if key not in pin.keys:
                pin.keys.append(key)
                pin.write()
            budget.touch(key)
        return budget.path(key)

    def release(self) -> None:
        held, self._held = self._held, {}
        for pin in held.values():
            try:
                with pin.budget.locked():
                    pin.drop()
                    pin.budget._evict()
            except (OSError, RetryableError) as exc:  # the attempt's outcome stands; the next add trims
                log.warning("%s: releasing the pins of %s failed: %s", pin.budget.label, self.owner, exc)

    def __enter__(self) -> Pins:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class _Pin:
    """One attempt's pin on one cache: a held lock file and the record of the keys it protects."""

    def __init__(self, budget: CacheBudget, owner: str) -> None:
        self.budget = budget
        self.owner = owner
        self.keys: list[str] = []
        self.record = budget.pins_dir / f"{uuid.uuid4().hex}.json"
        self.lock = FileLock(self.record.with_suffix(".lock"))
        if not self.lock.try_acquire():  # a fresh random name: only a broken file system says no
            raise RetryableError(f"cannot lock the new pin file {self.lock.path}")

    def write(self) -> None:
        body: dict[str, Any] = {"pid": os.getpid(), "owner": self.owner, "keys": self.keys}
        staged = self.record.with_suffix(".tmp")
        staged.write_text(json.dumps(body))
        os.replace(staged, self.record)  # readers see the old record or the new one, never half

    def drop(self) -> None:
        self.record.unlink(missing_ok=True)
        self.lock.release()
        self.lock.path.unlink(missing_ok=True)


def disk_share(root: Path, share: float) -> int:
    """`share` of the file system that holds `root` (or would, once created)."""
    probe = root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return int(shutil.disk_usage(probe).total * share)


def dataset_budget(root: Path, max_bytes: int | None) -> CacheBudget:
    limit = disk_share(root, DATASET_DISK_SHARE) if max_bytes is None else int(max_bytes)
    return CacheBudget(root, limit, DATASET_DEPTH, "dataset cache")


def code_budget(root: Path, max_bytes: int | None) -> CacheBudget:
    limit = disk_share(root, CODE_DISK_SHARE) if max_bytes is None else int(max_bytes)
    return CacheBudget(root, limit, CODE_DEPTH, "code bundle cache")


def cache_usage(settings: Settings) -> dict[str, dict[str, int]]:
    """Both caches' use and limits, for the worker's heartbeat (removes dead processes' pins only)."""
    return {
        "datasets": dataset_budget(settings.dataset_cache_dir, settings.dataset_cache_max_bytes).usage(),
        "code": code_budget(settings.code_cache_dir, settings.code_cache_max_bytes).usage(),
    }


def _entry_name(name: str) -> str:
    """The entry a file belongs to: `ArtifactStore.download` writes `.<name>.<id>.part` beside `<name>`
    and renames it into place when complete."""
    if name.startswith(".") and name.endswith(".part"):
        return name[1 : -len(".part")].rsplit(".", 1)[0]
    return name


def _size(item: os.DirEntry[str]) -> int:
    """Bytes under `item`, links not followed; what vanishes meanwhile counts nothing."""
    if not item.is_dir(follow_symlinks=False):
        return item.stat(follow_symlinks=False).st_size
    total = 0
    try:
        with os.scandir(item.path) as children:
            for child in children:
                with contextlib.suppress(FileNotFoundError):
                    total += _size(child)
    except FileNotFoundError:
        return 0
    return total
