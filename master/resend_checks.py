"""What Redis says of an attempt before the dispatcher's sweep sends its message again: whether a
worker leases it, which copy is the live one, and which queues a dead worker may have emptied.

Each read fails soft: with Redis away, the sweep still sends what the database says needs sending
(on RabbitMQ that needs no Redis), and the lease still lets one copy run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime

import redis

from master.dead_workers import read_taken_before
from shared.leases import leases_present
from shared.message_copies import SAME_COPY_SECONDS, newest_copy_key, parse_mark, record_newest

log = logging.getLogger(__name__)

Key = tuple[int, int]
#: Seconds the dead workers' bounds are reused: the sweep runs every second, workers die rarely,
#: and a re-send a few seconds later costs nothing.
BOUNDS_FOR = 5.0


class ResendChecks:
    def __init__(self, client: redis.Redis, offline_after: float, mark_ttl: int) -> None:
        self._redis = client
        self._offline_after = offline_after
        self._mark_ttl = mark_ttl
        self._bounds: dict[str, datetime] = {}
        self._bounds_at = -BOUNDS_FOR

    def dead_worker_bounds(self) -> dict[str, datetime]:
        """master/dead_workers.py's bounds, read at most every `BOUNDS_FOR` seconds; none while
        Redis is away (the dead workers' beats are still there when it is back)."""
        if time.monotonic() - self._bounds_at >= BOUNDS_FOR:
            try:
                self._bounds = read_taken_before(self._redis, self._offline_after)
            except redis.RedisError as exc:
                log.warning("cannot read the workers' beats, no re-send for dead workers now: %s", exc)
                self._bounds = {}
            self._bounds_at = time.monotonic()
        return self._bounds

    def leased(self, keys: Sequence[Key]) -> set[Key]:
        """The attempts a worker holds a lease on (or ended): one took a copy and runs it, or is
        about to say so; another copy would only be dropped. Should that worker die before it
        says so, its lease expires and a later sweep finds the attempt again."""
        if not keys:
            return set()
        try:
            return {key for key, held in zip(keys, leases_present(self._redis, keys), strict=True) if held}
        except redis.RedisError as exc:
            log.warning("cannot read the attempts' leases, sending all %d: %s", len(keys), exc)
            return set()

    def not_before(self, keys: Sequence[Key]) -> dict[Key, float]:
        """Per attempt, the least `issued_at` a new copy may carry to be newer than the live one,
        even if this master's clock has stepped back since: workers drop copies older than it."""
        if not keys:
            return {}
        try:
            pipe = self._redis.pipeline(transaction=False)
            for job_id, number in keys:
                pipe.get(newest_copy_key(job_id, number))
            marks = pipe.execute()
        except redis.RedisError as exc:
            log.warning("cannot read the live copies' marks: %s", exc)
            return {}
        # No mark, or an unreadable one: the clock alone decides.
        parsed = {key: parse_mark(raw) for key, raw in zip(keys, marks, strict=True)}
        return {key: mark + 2 * SAME_COPY_SECONDS for key, mark in parsed.items() if mark is not None}

    def mark_live(self, issued: Sequence[tuple[Key, float]]) -> None:
        """Make the copies just sent the live ones. Unmarked, the old copies are not stale, only
        duplicates the lease stops: nothing is lost, so a Redis error is logged, not raised."""
        if not issued:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for (job_id, number), issued_at in issued:
                record_newest(pipe, job_id, number, issued_at, self._mark_ttl)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not mark %d re-sent messages as the live copies: %s", len(issued), exc)
