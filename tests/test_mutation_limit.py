"""The per-token limit on changing requests, against a real Redis: counted locally far from the
limit, exactly in Redis near it, shared by several masters, weighed as a sliding window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from master.auth.mutation_limit import PREFIX, MutationLimit
from master.auth.token_cache import TokenCache, TokenRecord
from shared.errors import RateLimited
from trainfarm.services import RedisServer

WINDOW = 60
#: The start of a window, so `now` values below say where in it a request falls.
T0 = 1_000 * WINDOW


@pytest.fixture
def url(redis_server: RedisServer) -> Iterator[str]:
    redis.Redis.from_url(redis_server.url).flushdb()
    yield redis_server.url


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def stored(url: str, key: str, window: int) -> int:
    value = redis.Redis.from_url(url).get(f"{PREFIX}:{key}:{window}")
    return int(value or 0)


def test_far_from_the_limit_counts_stay_local_until_a_flush(url: str) -> None:
    async def scenario() -> tuple[int, int]:
        limit = MutationLimit(aioredis.Redis.from_url(url), limit=100, window=WINDOW)
        for i in range(20):
            await limit.hit("t", now=T0 + i * 0.1)
        before = stored(url, "t", T0 // WINDOW)
        await limit.flush()
        return before, stored(url, "t", T0 // WINDOW)

    # The first request of a window is counted in Redis (it learns the farm's total); the next
    # nineteen wait for the flush, which adds them in one round trip.
    assert run(scenario()) == (1, 20)


def test_near_the_limit_two_masters_share_it_exactly(url: str) -> None:
    async def scenario() -> list[str]:
        a = MutationLimit(aioredis.Redis.from_url(url), limit=4, window=WINDOW)
        b = MutationLimit(aioredis.Redis.from_url(url), limit=4, window=WINDOW)
        outcomes = []
        for i, master in enumerate([a, b, a, b, a, b]):
            try:
                await master.hit("t", now=T0 + i)
                outcomes.append("ok")
            except RateLimited as exc:
                outcomes.append(f"429 after {exc.retry_after}s")
        return outcomes

    outcomes = run(scenario())
    assert outcomes[:4] == ["ok"] * 4
    assert all(o.startswith("429") for o in outcomes[4:])
    # Refused requests are not counted: the farm's total is the four that went through.
    assert stored(url, "t", T0 // WINDOW) == 4
    # Nothing of the window leaves it before its end: the wait is at least the rest of it.
    assert int(outcomes[4].split()[2].rstrip("s")) >= WINDOW - 5


def test_the_previous_window_weighs_as_much_as_it_still_overlaps(url: str) -> None:
    async def scenario() -> tuple[bool, bool]:
        limit = MutationLimit(aioredis.Redis.from_url(url), limit=10, window=WINDOW)
        for i in range(10):
            await limit.hit("t", now=T0 + 50 + i * 0.1)  # a full window's worth, late in it
        await limit.flush()

        async def allowed(at: float) -> bool:
            try:
                await limit.hit("t", now=at)
                return True
            except RateLimited:
                return False

        # Just into the next window the previous ten still count almost whole; three quarters in,
        # a quarter of them (2.5) do, and there is room.
        return await allowed(T0 + WINDOW + 1), await allowed(T0 + WINDOW + 45)

    assert run(scenario()) == (False, True)


def test_counts_of_a_refused_flush_are_sent_again(url: str, redis_server: RedisServer) -> None:
    async def scenario() -> int:
        client = aioredis.Redis.from_url(url)
        limit = MutationLimit(client, limit=100, window=WINDOW)
        for i in range(5):
            await limit.hit("t", now=T0 + i)
        broken = MutationLimit(aioredis.Redis.from_url("redis://127.0.0.1:9/0"), limit=100, window=WINDOW)
        broken._seen, broken._dirty = limit._seen, limit._dirty  # the same counts, Redis away
        with pytest.raises(redis.RedisError):
            await broken.flush()
        limit._dirty = broken._dirty
        await limit.flush()
        return stored(url, "t", T0 // WINDOW)

    assert run(scenario()) == 5


# The token cache -----------------------------------------------------------------------------------

RECORD = TokenRecord(
    id=1,
    name="laptop",
    prefix="tf_abcdef",
    kind="api",
    revoked_at=None,
    expires_at=None,
    user_name="alice",
    role="member",
    disabled=False,
)


def test_the_token_cache_is_used_only_while_it_hears_the_change_channel() -> None:
    cache = TokenCache()
    cache.put("d", RECORD, cache.generation)
    assert cache.get("d") is None  # not listening: nothing kept, every request asks the database
    cache.listening = True
    cache.put("d", RECORD, cache.generation)
    assert cache.get("d") == RECORD
    cache.listening = False
    assert cache.get("d") is None


def test_cached_tokens_are_trusted_for_a_bounded_time_and_touched_once_a_minute() -> None:
    cache = TokenCache(max_age=0.05)
    cache.listening = True
    cache.put("d", RECORD, cache.generation)
    assert cache.due_touch("d", every=60) and not cache.due_touch("d", every=60)
    time.sleep(0.06)
    assert cache.get("d") is None
    cache.put("d", RECORD, cache.generation)
    cache.clear()
    assert cache.get("d") is None


def test_a_row_read_before_a_change_is_not_kept_after_it() -> None:
    cache = TokenCache()
    cache.listening = True
    before = cache.generation  # a request starts reading the token's row
    cache.clear()  # meanwhile the token is revoked and the change announced
    cache.put("d", RECORD, before)  # the row it read may predate the revocation
    assert cache.get("d") is None
