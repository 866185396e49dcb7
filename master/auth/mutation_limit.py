"""The per-token limit on changing requests, shared by a farm's masters through Redis, with no
round trip to Redis for a token well within its limit.

A round trip per request cost a tenth of the farm's submission rate (bench/submit.py), so a master
counts a token's requests here while they are under half the limit, and adds those counts to Redis
every `FLUSH_EVERY` seconds in one pipeline for all tokens. Nearer the limit, and for the first
request of a window, each request is counted in Redis at once and decided on the farm's total, so
the limit holds exactly across masters where it matters. Counts are per window
(`<prefix>:<key>:<window number>`, expiring after two windows) and weighed as a sliding window: the
previous window's count, scaled by how much of it still overlaps the last `window` seconds, plus
the current one's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from shared.errors import RateLimited

log = logging.getLogger("trainfarm.master.auth")

PREFIX = "tf:ratelimit:mutations"
#: Seconds between two flushes of this master's counts to Redis.
FLUSH_EVERY = 0.1


@dataclass
class _Seen:
    """One key in one window: the farm's totals when last read, and this master's counts since."""

    window: int
    current: int = 0
    previous: int = 0
    pending: int = 0
    #: Whether the totals were read from Redis in this window.
    synced: bool = False


class MutationLimit:
    """
    :param aredis: The farm's Redis, where the totals are kept.
    :param limit: Requests one key may make per window.
    :param window: Seconds of the window.
    """

    def __init__(self, aredis: aioredis.Redis, limit: int, window: int) -> None:
        self._redis = aredis
        self.limit = limit
        self.window = window
        self._seen: dict[str, _Seen] = {}
        self._dirty: set[str] = set()

    async def hit(self, key: str, now: float | None = None) -> None:
        """Count one request for `key`, or raise RateLimited (429) if it would pass the limit."""
        now = time.time() if now is None else now
        seen = self._current(key, now)
        elapsed = (now % self.window) / self.window
        if seen.synced and self._count(seen, elapsed) + 1 <= self.limit / 2:
            seen.pending += 1
            self._dirty.add(key)
            return
        await self._count_in_redis(key, seen, elapsed)

    def _count(self, seen: _Seen, elapsed: float) -> float:
        return seen.previous * (1 - elapsed) + seen.current + seen.pending

    def _current(self, key: str, now: float) -> _Seen:
        number = int(now // self.window)
        seen = self._seen.get(key)
        if seen is None or seen.window != number:
            # Counts of the old window not flushed yet (one flush interval's worth at most) are
            # left out of Redis; the next read of the totals there brings the right previous count.
            seen = self._seen[key] = _Seen(number)
        return seen

    async def _count_in_redis(self, key: str, seen: _Seen, elapsed: float) -> None:
        current_key = f"{PREFIX}:{key}:{seen.window}"
        adding = seen.pending + 1
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incrby(current_key, adding)
            pipe.expire(current_key, 2 * self.window)
            pipe.get(f"{PREFIX}:{key}:{seen.window - 1}")
            total, _, previous = await pipe.execute()
        seen.pending -= adding - 1  # what other requests added meanwhile stays pending
        seen.current, seen.previous, seen.synced = int(total), int(previous or 0), True
        if self._count(seen, elapsed) > self.limit:
            await self._redis.decr(current_key)  # a refused request does not count
            seen.current -= 1
            raise RateLimited(
                f"more than {self.limit} changing requests {self._per()} with this token "
                "(TRAINFARM_RATE_LIMIT_MUTATIONS_PER_MINUTE); wait and retry",
                self._retry_after(seen, elapsed),
            )

    def _retry_after(self, seen: _Seen, elapsed: float) -> int:
        """Seconds until the sliding count falls below the limit, if nothing more is counted."""
        current = seen.current + seen.pending
        if current < self.limit and seen.previous > 0:
            # Within this window: the previous one's weight falls until there is room for one more.
            until = 1 - (self.limit - 1 - current) / seen.previous
            wait = (until - elapsed) * self.window
        else:
            # In the next window, where this one's count, as the previous, falls the same way.
            until = 1 - (self.limit - 1) / current if current else 0.0
            wait = (1 - elapsed + max(until, 0.0)) * self.window
        return max(1, math.ceil(wait))

    def _per(self) -> str:
        return "a minute" if self.window == 60 else f"per {self.window} s"

    async def flush(self) -> None:
        """Add this master's counts to the farm's and read the farm's totals, in one round trip."""
        keys, self._dirty = list(self._dirty), set()
        known = [(key, self._seen[key]) for key in keys if key in self._seen]
        batch = [(key, seen, seen.pending) for key, seen in known if seen.pending]
        if not batch:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, seen, pending in batch:
                current_key = f"{PREFIX}:{key}:{seen.window}"
                pipe.incrby(current_key, pending)
                pipe.expire(current_key, 2 * self.window)
                pipe.get(f"{PREFIX}:{key}:{seen.window - 1}")
            try:
                answers = await pipe.execute()
            except redis.RedisError:
                self._dirty.update(keys)  # sent again next time: nothing counted is forgotten
                raise
        for i, (_key, seen, pending) in enumerate(batch):
            total, _, previous = answers[3 * i : 3 * i + 3]
            seen.pending -= pending
            seen.current, seen.previous = int(total), int(previous or 0)
        self._forget_idle(time.time())

    def _forget_idle(self, now: float) -> None:
        number = int(now // self.window)
        for key in [k for k, s in self._seen.items() if s.window < number and not s.pending]:
            del self._seen[key]

    async def run(self) -> None:
        """Flush every FLUSH_EVERY seconds until cancelled."""
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                await self.flush()
            except redis.RedisError as exc:
                log.warning("could not add this master's request counts to Redis: %s", exc)
