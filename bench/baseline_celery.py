"""The dispatch baseline: a bare Celery app on the farm's Redis with the farm's Celery settings.

`celery -A bench.baseline_celery worker -Q bench` runs it; its one task writes the moment it began
to a Redis list the benchmark waits on.
"""

from __future__ import annotations

import time

import redis
from celery import Celery

from shared.celery_config import celery_config
from shared.settings import get_settings
from shared.signing import Verifier, worker_public_key

QUEUE = "bench"
TASK = "bench.started"
#: The same task behind the farm's signature check: what signing adds to a dispatch, alone.
SIGNED_TASK = "bench.started_signed"

app = Celery("bench-baseline")
app.conf.update(celery_config(get_settings()))
_client: redis.Redis | None = None


@app.task(name=TASK)
def started(key: str) -> None:
    """Record when the task began; nothing else."""
    _record(key, time.time())


@app.task(name=SIGNED_TASK)
def started_signed(message: dict) -> None:
    """Verify the message as a worker does (Ed25519 over the payload, then parse it), then record
    when that was done; its key is the signed job's name."""
    global _verifier
    if _verifier is None:
        key = worker_public_key(get_settings())
        assert key is not None, "the baseline worker needs TRAINFARM_SIGNING_PUBLIC_KEY"
        _verifier = Verifier(key, get_settings().message_max_age)
    task = _verifier.verify(message)
    assert task.spec.name is not None
    _record(task.spec.name, time.time())


_verifier: Verifier | None = None


def _record(key: str, now: float) -> None:
    global _client
    if _client is None:  # per pool process, after the fork
        _client = redis.Redis.from_url(get_settings().redis_connection_url())
    _client.rpush(key, repr(now))
