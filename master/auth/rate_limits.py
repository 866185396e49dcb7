"""Rate limits kept in Redis, so every master process of a farm counts against the same numbers:
changing requests per token (`MutationLimit`), failed logins per client address (the `limits`
library: a login runs an argon2 check anyway, so its Redis round trip costs nothing that matters)."""

from __future__ import annotations

import math
import time

import redis
import redis.asyncio as aioredis
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from master.auth.mutation_limit import MutationLimit
from shared.errors import RateLimited


class RateLimits:
    """
    :param redis_url: The farm's Redis URL; `limits` reads only its scheme (redis or valkey).
    :param broker: A client whose connection pool the login counters use (sync: logins run in
        the thread pool with the password check), so they reach Redis with its password and TLS
        options: a URL alone would carry neither the CA nor the client certificate.
    :param aredis: An asyncio client for the mutation counters, counted on the event loop.
    :param mutations_per_minute: Mutating requests one token may make in a window.
    :param failed_logins_per_minute: Failed logins one address may make in a window.
    :param window: Seconds of that window: a minute (settings.rate_limit_window).
    """

    def __init__(
        self,
        redis_url: str,
        broker: redis.Redis,
        aredis: aioredis.Redis,
        mutations_per_minute: int,
        failed_logins_per_minute: int,
        window: int = 60,
    ) -> None:
        # A sliding window: a fixed one would let twice the limit through around a minute's edge.
        self._logins_limiter = SlidingWindowCounterRateLimiter(
            RedisStorage(redis_url, connection_pool=broker.connection_pool)
        )
        self._logins = RateLimitItemPerSecond(failed_logins_per_minute, window)
        self._per = "a minute" if window == 60 else f"per {window} s"
        self.mutations = MutationLimit(aredis, mutations_per_minute, window)

    async def count_mutation(self, token_key: str) -> None:
        await self.mutations.hit(token_key)

    def check_login(self, address: str) -> None:
        """Refuse a login attempt from an address that has failed too often of late."""
        if not self._logins_limiter.test(self._logins, "logins", address):
            reset, _ = self._logins_limiter.get_window_stats(self._logins, "logins", address)
            raise RateLimited(
                f"more than {self._logins.amount} failed logins {self._per} from this address; wait and retry",
                max(1, math.ceil(reset - time.time())),
            )

    def failed_login(self, address: str) -> None:
        self._logins_limiter.hit(self._logins, "logins", address)
