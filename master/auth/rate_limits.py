"""Rate limits kept in Redis (the `limits` library), so every master process of a farm counts
against the same numbers: mutating requests per token, failed logins per client address."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from shared.errors import RateLimited


class RateLimits:
    """
    :param storage: Where the counters live; `RedisStorage(settings.redis_url)` on a farm.
    :param mutations_per_minute: Mutating requests one token may make in a window.
    :param failed_logins_per_minute: Failed logins one address may make in a window.
    :param window: Seconds of that window: a minute (settings.rate_limit_window).
    """

    def __init__(
        self,
        storage: RedisStorage,
        mutations_per_minute: int,
        failed_logins_per_minute: int,
        window: int = 60,
    ) -> None:
        # A sliding window: a fixed one would let twice the limit through around a minute's edge.
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._mutations = RateLimitItemPerSecond(mutations_per_minute, window)
        self._logins = RateLimitItemPerSecond(failed_logins_per_minute, window)
        self._per = "a minute" if window == 60 else f"per {window} s"

    def count_mutation(self, token_key: str) -> None:
        if not self._limiter.hit(self._mutations, "mutations", token_key):
            raise RateLimited(
                f"more than {self._mutations.amount} changing requests {self._per} with this token "
                "(TRAINFARM_RATE_LIMIT_MUTATIONS_PER_MINUTE); wait and retry",
                self._retry_after(self._mutations, "mutations", token_key),
            )

    def check_login(self, address: str) -> None:
        """Refuse a login attempt from an address that has failed too often of late."""
        if not self._limiter.test(self._logins, "logins", address):
            raise RateLimited(
                f"more than {self._logins.amount} failed logins {self._per} from this address; wait and retry",
                self._retry_after(self._logins, "logins", address),
            )

    def failed_login(self, address: str) -> None:
        self._limiter.hit(self._logins, "logins", address)

    def _retry_after(self, item: RateLimitItem, *keys: str) -> int:
        reset, _remaining = self._limiter.get_window_stats(item, *keys)
        return max(1, math.ceil(reset - time.time()))
