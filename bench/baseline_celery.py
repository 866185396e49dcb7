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

QUEUE = "bench"
TASK = "bench.started"

app = Celery("bench-baseline")
app.conf.update(celery_config(get_settings()))
_client: redis.Redis | None = None


@app.task(name=TASK)
def started(key: str) -> None:
    """Record when the task began; nothing else."""
    now = time.time()
    global _client
    if _client is None:  # per pool process, after the fork
        _client = redis.Redis.from_url(get_settings().redis_url)
    _client.rpush(key, repr(now))
