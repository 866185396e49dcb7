"""Redis clients that ride out a Redis restart (commands are retried on a dropped connection) and
speak to a password-protected or TLS Redis as the settings say."""

from __future__ import annotations

import ssl
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared.settings import Settings

#: About five seconds of retries in all: a restarted Redis is back well within that.
RETRIES = 8
RETRY_ON = [redis.ConnectionError, redis.TimeoutError]


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.05)


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS arguments for a `rediss://` URL (none for `redis://`): the server's
    certificate is always verified, against `redis_ca_file` or the system's CAs. Celery's
    `broker_use_ssl` takes the same keys, the requirement as an `ssl` constant."""
    if not settings.redis_url.startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_ca_file)
    if settings.redis_cert_file is not None:
        options["ssl_certfile"] = str(settings.redis_cert_file)
    if settings.redis_key_file is not None:
        options["ssl_keyfile"] = str(settings.redis_key_file)
    return options


def make_redis(settings: Settings, socket_timeout: float = 30) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_connection_url(),
        socket_timeout=socket_timeout,
        health_check_interval=30,
        retry=Retry(_backoff(), RETRIES),
        retry_on_error=RETRY_ON,
        **tls_options(settings),
    )


def make_async_redis(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.redis_connection_url(),
        health_check_interval=30,
        retry=AsyncRetry(_backoff(), RETRIES),
        retry_on_error=RETRY_ON,
        **tls_options(settings),
    )
