"""How full Redis is, read from `INFO memory` at most once a second by whoever asks often.

Redis is the queue as well as the log and event bus, and it runs with `maxmemory` and
`noeviction`: at the limit it refuses writes, leases and events included. Submissions stop at one
share of the limit (master/admission.py) and live log lines at a higher one (worker/logpump.py), so
what must keep working has the rest.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

#: Seconds an `INFO memory` reading is used before it is read again.
READ_INTERVAL = 1.0


@dataclass(frozen=True)
class MemoryReading:
    used: int
    #: Redis's maxmemory; 0 when it has none (an operator's own Redis), so it is never full.
    limit: int

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> MemoryReading:
        return cls(int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))

    def above(self, fraction: float) -> bool:
        return self.limit > 0 and self.used > fraction * self.limit

    def describe(self) -> str:
        return f"{self.used / 2**20:,.0f} MiB of {self.limit / 2**20:,.0f} MiB"


class _Cached:
    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self._interval = interval
        self._clock = clock
        self._reading: MemoryReading | None = None
        self._read_at = float("-inf")

    def _fresh(self) -> MemoryReading | None:
        if self._reading is not None and self._clock() - self._read_at < self._interval:
            return self._reading
        return None

    def _keep(self, info: dict[str, Any]) -> MemoryReading:
        self._reading, self._read_at = MemoryReading.from_info(info), self._clock()
        return self._reading


class MemoryGauge(_Cached):
    """Synchronous side (workers)."""

    def __init__(
        self,
        client: redis.Redis,
        interval: float = READ_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval, clock)
        self._redis = client

    def read(self) -> MemoryReading:
        return self._fresh() or self._keep(self._redis.info("memory"))


class AsyncMemoryGauge(_Cached):
    """Asynchronous side (the master's routes)."""

    def __init__(
        self,
        client: aioredis.Redis,
        interval: float = READ_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval, clock)
        self._redis = client

    async def read(self) -> MemoryReading:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        info: Awaitable[dict[str, Any]] = self._redis.info("memory")
        return self._keep(await info)
