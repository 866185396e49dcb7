"""Which of this node's GPUs a job gets: one lock file per GPU, held while an attempt uses it.

File locks rather than Redis: the operating system drops them the moment the holding process dies
(kill -9, OOM, power), so a crashed pool child never leaves a GPU marked busy, and pool processes of
every worker on the machine (one per queue, say) share them through the work directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared.schemas import JobSpec
from shared.settings import Settings
from worker import gpus
from worker.filelock import FileLock

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2


def node_gpu_indices(settings: Settings) -> list[int]:
    """The GPUs this worker hands out: TRAINFARM_GPUS ("0,1", or "none"), else every detected one."""
    if settings.gpus is None:
        return sorted(g["index"] for g in gpus.list_gpus() if isinstance(g.get("index"), int))
    if settings.gpus.strip().lower() in ("", "none"):
        return []
    return sorted({int(part) for part in settings.gpus.split(",") if part.strip()})


@dataclass
class Claim:
    """GPUs held by one attempt until `release()` (or the end of a `with` block)."""

    gpus: tuple[int, ...]
    locks: list[FileLock] = field(default_factory=list)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class GpuSlots:
    def __init__(self, indices: Sequence[int], lock_dir: Path) -> None:
        self.indices = tuple(indices)
        self._lock_dir = lock_dir
        lock_dir.mkdir(parents=True, exist_ok=True)

    def try_claim(self, count: int) -> Claim | None:
        """`count` free GPUs, lowest indices first; None, holding nothing, when fewer are free."""
        claim = Claim(())
        for index in self.indices:
            lock = FileLock(self._lock_dir / f"gpu-{index}.lock")
            if lock.try_acquire():
                claim.locks.append(lock)
                claim.gpus = (*claim.gpus, index)
                if len(claim.gpus) == count:
                    return claim
        claim.release()
        return None

    def claim(self, spec: JobSpec, wait: float) -> Claim | None:
        """The GPUs a job needs: none for a cpu-queue job or on a node without GPUs (its `devices`
        are then CPU processes); None when they did not come free within `wait` seconds."""
        if spec.queue != "gpu" or not self.indices:
            return Claim(())
        if spec.devices > len(self.indices):
            log.warning("a job asks for %d GPUs; this node has %d", spec.devices, len(self.indices))
            time.sleep(wait)  # not a tight loop of taking and putting back while a bigger node is busy
            return None
        deadline = time.monotonic() + wait
        claim = self.try_claim(spec.devices)
        if claim is None:
            log.info("%d GPUs busy here; waiting up to %.0f s for them", spec.devices, wait)
        while claim is None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            claim = self.try_claim(spec.devices)
        return claim
