"""Code bundles on the node: downloaded once per digest into a local cache (kept under its size limit,
worker/cache_budget.py), unpacked into each attempt."""

from __future__ import annotations

import contextlib
import logging
import os
import tarfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from shared.errors import FinalError, NotFound, RetryableError
from shared.storage import ArtifactStore, code_bundle_key, file_sha256
from worker.cache_budget import Pins, code_budget

log = logging.getLogger(__name__)
#: Far above any project `trainfarm submit` packs (200 MiB compressed at most), far below a full disk.
MAX_UNPACKED_BYTES = 4 * 1024**3


class CodeBundles:
    """The bundles `trainfarm submit DIR` uploads, as the node keeps them.

    :param store: Where bundles live, under `code/<digest>.tar.gz`.
    :param root: The node's cache folder; one archive per digest, checked against it before each use.
    :param max_bytes: Its size limit; None: a share of its disk (`cache_budget.CODE_DISK_SHARE`).
    """

    def __init__(self, store: ArtifactStore, root: Path, max_bytes: int | None = None) -> None:
        self._store = store
        self.budget = code_budget(root, max_bytes)

    def unpack(self, digest: str, dest: Path, pins: Pins | None = None) -> int:
        """Extract bundle `digest` into `dest`; the number of files. FinalError if it is missing or unsafe.

        `pins` keeps the archive cached until released; without, only during the call.
        """
        with contextlib.ExitStack() as stack:
            if pins is None:
                pins = stack.enter_context(Pins(f"code unpack in pid {os.getpid()}"))
            return self._unpack(self._archive(digest, pins), digest, dest)

    def _unpack(self, archive: Path, digest: str, dest: Path) -> int:
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    _check(digest, member)
                unpacked = sum(m.size for m in members)
                if unpacked > MAX_UNPACKED_BYTES:  # a few hundred MB of gzip can hold terabytes of zeros
                    raise FinalError(
                        f"code bundle {digest} unpacks to {unpacked} bytes, over {MAX_UNPACKED_BYTES}; refused",
                        field="code",
                    )
                # The data filter refuses what the check above missed (absolute or outside paths, links).
                tar.extractall(dest, members=members, filter="data")
        except (tarfile.TarError, EOFError) as exc:
            raise FinalError(f"code bundle {digest} cannot be unpacked: {exc}", field="code") from None
        return sum(1 for m in members if m.isfile())

    def _archive(self, digest: str, pins: Pins) -> Path:
        key = f"{digest}.tar.gz"
        # Pinned before it is hashed, so no other process evicts it between the check and the unpack.
        path = pins.hold(self.budget, key)
        # Hashed on every use, not only after download: a cut-off or damaged cache file is fetched again.
        if path.is_file() and file_sha256(path) == digest:
            log.info("code bundle %s: cache hit", digest[:12])
            return path
        remote = code_bundle_key(digest)
        try:
            self._store.stat(remote)
        except NotFound:
            raise FinalError(
                f"code bundle {digest} is not in storage ({remote}); submit the project again to upload it",
                field="code",
            ) from None
        self._store.download(remote, path)  # into place by rename: a concurrent reader never sees half
        got = file_sha256(path)
        if got != digest:  # the master checked it on upload: a damaged download, worth another attempt
            path.unlink(missing_ok=True)
            raise RetryableError(f"code bundle {remote} arrived with SHA-256 {got}, not its name")
        self.budget.added(key)
        log.info("code bundle %s: downloaded", digest[:12])
        return path


def _check(digest: str, member: tarfile.TarInfo) -> None:
    # Read both ways: a Windows node would take `..\x` or `C:x` as climbing out of `dest` too.
    posix, windows = PurePosixPath(member.name), PureWindowsPath(member.name)
    if posix.is_absolute() or windows.anchor or ".." in posix.parts or ".." in windows.parts:
        raise FinalError(f"code bundle {digest} holds an unsafe path {member.name!r}; refused", field="code")
    if not (member.isfile() or member.isdir()):
        # `trainfarm submit` packs files and folders only; anything else came from elsewhere.
        raise FinalError(
            f"code bundle {digest} holds {member.name!r}, which is neither a file nor a folder; refused",
            field="code",
        )
