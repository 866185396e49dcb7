"""Whether this worker takes new jobs: not while its disk is nearly full, nor while it drains.

A paused worker stops consuming its queues (Celery's consumer cancel, as `celery control
cancel_consumer` does): the messages stay on the broker for other workers, none is fetched only to be
bounced. It says why in its heartbeat (`paused`), its running attempts go on untouched, and it
consumes again once the reason is gone. The check runs with the heartbeat in the worker's main
process; the consumer itself is changed on its own event loop (`Consumer.call_soon`, which both the
prefork hub and the solo/threads loop serve), the one thread that may touch it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from shared.settings import Settings
from shared.streams import drain_key
from worker.identity import WorkerIdentity

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: A paused worker resumes only with this much more than the floor free, so a job writing near the
#: floor does not flip it on and off at every beat.
RESUME_FACTOR = 1.25


@dataclass(frozen=True)
class DiskReading:
    path: Path
    free: int
    total: int


def read_disks(paths: Iterable[Path]) -> list[DiskReading]:
    """Free and total bytes of the filesystem of each path (its nearest existing folder: the work
    and cache dirs are made on first use)."""
    readings = []
    for path in paths:
        existing = Path(path)
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        usage = shutil.disk_usage(existing)
        readings.append(DiskReading(Path(path), usage.free, usage.total))
    return readings


def disk_floor(total: int, min_free_mb: int, min_free_percent: float) -> int:
    """The free bytes a disk of `total` bytes must keep: the larger of the two settings."""
    return max(min_free_mb * MIB, int(total * min_free_percent / 100))


def disk_pause_reason(
    readings: Iterable[DiskReading], min_free_mb: int, min_free_percent: float, paused: bool
) -> str | None:
    """Why the worker must not take jobs for lack of disk, or None. Once `paused`, it stays so
    until every disk has `RESUME_FACTOR` times its floor free."""
    for disk in readings:
        floor = disk_floor(disk.total, min_free_mb, min_free_percent)
        needed = floor * RESUME_FACTOR if paused else floor
        if disk.free < needed:
            return f"disk low: {disk.free // MIB} MiB free on {disk.path}, needs {floor // MIB} MiB"
    return None


class Intake:
    """Pauses and resumes the consumer of one worker; `check()` once per heartbeat."""

    def __init__(
        self, consumer: Any, settings: Settings, client: redis.Redis, identity: WorkerIdentity
    ) -> None:
        self._consumer = consumer
        self._settings = settings
        self._redis = client
        self._identity = identity
        #: What `-Q` selected, read before any pause: what a resumed worker consumes again.
        self.queues = sorted(consuming(consumer) or [])
        self.reason: str | None = None

    def check(self) -> str | None:
        """Decide, apply, and return why the worker is paused (None: it takes jobs)."""
        reason = self._decide()
        if reason != self.reason:
            if reason is None:
                log.warning("taking jobs again (%s no longer holds)", self.reason)
            else:
                log.warning("not taking new jobs: %s", reason)
        self.reason = reason
        self._apply(paused=reason is not None)
        return reason

    def _decide(self) -> str | None:
        try:
            if self._redis.exists(drain_key(self._identity.key)):
                return "draining: this worker is shutting down"
        except redis.RedisError:
            pass  # the heartbeat reports the outage; the disk still decides
        s = self._settings
        try:
            disks = read_disks(_unique([s.job_work_dir, s.dataset_cache_dir.parent]))
        except OSError as exc:  # a disk that cannot be read is no reason to change course
            log.warning("cannot read the free disk space: %s", exc)
            return self.reason
        return disk_pause_reason(disks, s.min_free_disk_mb, s.min_free_disk_percent, self.reason is not None)

    def _apply(self, paused: bool) -> None:
        # Level-triggered: compared with what the consumer does now at every beat, so a change
        # lost in a broker reconnect is made again.
        live = consuming(self._consumer)
        if live is None:
            return  # reconnecting: the rebuilt consumer takes the selection as we left it
        consumer = self._consumer
        if paused:
            for queue in sorted(live & set(self.queues)):
                consumer.call_soon(consumer.cancel_task_queue, queue)
        else:
            for queue in sorted(set(self.queues) - live):
                consumer.call_soon(consumer.add_task_queue, queue)


def consuming(consumer: Any) -> set[str] | None:
    """The queues the live consumer takes messages from; None while it is being rebuilt."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return None
    return {q.name for q in task_consumer.queues}


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))
