"""The clients a worker process uses, built once per process (after any fork), never at import."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis

from shared.leases import Leases
from shared.redis_client import make_redis
from shared.settings import Settings, get_settings
from shared.storage import ArtifactStore, make_s3_client
from shared.streams import EventBus, LogStream
from worker.datasets import DatasetCache


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    store: ArtifactStore
    bus: EventBus
    logs: LogStream
    datasets: DatasetCache
    leases: Leases

    @classmethod
    def connect(cls, settings: Settings) -> WorkerContext:
        client = make_redis(settings.redis_url)
        store = ArtifactStore(make_s3_client(settings), settings.s3_bucket)
        return cls(
            settings=settings,
            redis=client,
            store=store,
            bus=EventBus(client),
            logs=LogStream(client, settings.log_stream_maxlen),
            datasets=DatasetCache(store, settings.dataset_cache_dir),
            leases=Leases(client, settings.lease_ttl),
        )


_lock = threading.Lock()
_contexts: dict[int, WorkerContext] = {}


def current() -> WorkerContext:
    """This process's context; a forked pool child builds its own instead of sharing sockets."""
    with _lock:
        pid = os.getpid()
        if pid not in _contexts:
            _contexts[pid] = WorkerContext.connect(get_settings())
        return _contexts[pid]
