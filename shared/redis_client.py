"""Redis clients that ride out a Redis restart: commands are retried on a dropped connection."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

#: About five seconds of retries in all: a restarted Redis is back well within that.
RETRIES = 8
RETRY_ON = [redis.ConnectionError, redis.TimeoutError]


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.05)


def make_redis(url: str, socket_timeout: float = 30) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        retry=Retry(_backoff(), RETRIES),
        retry_on_error=RETRY_ON,
    )


def make_async_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, health_check_interval=30, retry=AsyncRetry(_backoff(), RETRIES), retry_on_error=RETRY_ON
    )
