"""A worker's heartbeat: what it is, what it offers and what it runs, written to Redis every few seconds.

One field of `NODES_KEY` per worker (its identity key, `node#instance`), so two workers on one
machine under one node name do not overwrite each other; the master merges them into one node.
The beat runs in a thread of the Celery main process; with a prefork pool that process never runs a
job, so it must not import torch either: versions are read from package metadata. The same thread
decides whether the worker takes jobs (`worker.intake`) and reports why not.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import socket
import threading
import time
from importlib import metadata
from typing import Any

import celery
import psutil
import redis
from celery.concurrency import ALIASES

from shared.settings import Settings, get_settings
from shared.streams import NODES_KEY, node_attempts_key
from worker import context, gpus, identity
from worker.cache_budget import cache_usage
from worker.intake import Intake

log = logging.getLogger(__name__)
_stop = threading.Event()
#: Cache sizes are summed by walking the cache folders: fresh enough at this age, and cheap.
CACHE_USAGE_MAX_AGE = 30.0


class CacheUsage:
    """The caches' use and limits for the beat, measured at most every `CACHE_USAGE_MAX_AGE` s; a
    cache that cannot be read leaves the last figures (or none), never a missed beat."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._value: dict[str, dict[str, int]] | None = None
        self._at = -CACHE_USAGE_MAX_AGE

    def read(self) -> dict[str, dict[str, int]] | None:
        now = time.monotonic()
        if now - self._at >= CACHE_USAGE_MAX_AGE:
            self._at = now
            try:
                self._value = cache_usage(self._settings)
            except Exception as exc:  # the lock held too long, a folder unreadable: figures only
                log.warning("cannot measure the caches: %s", exc)
        return self._value


def node_info(consumer: Any, client: redis.Redis, paused: str | None = None) -> dict[str, Any]:
    """The beat: who the worker is, how Celery runs there, its CPUs, memory and GPUs, the attempts
    it runs, the software they get and why it takes no jobs (`paused`, None when it does). Times
    are Unix seconds; memory is in bytes."""
    me = identity.current()
    worker = getattr(consumer, "controller", None)
    memory = psutil.virtual_memory()
    seconds, micros = client.time()
    return {
        "name": me.node,
        "instance": me.instance,
        "worker": me.key,
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
        # Redis's clock, not this machine's: the master judges a node's silence by it, so a
        # worker whose clock is off is still seen online.
        "ts": seconds + micros / 1e6,
        "queues": _queues(consumer),
        "pool": _pool_name(getattr(worker, "pool", None)),
        "concurrency": getattr(worker, "concurrency", None),
        "cpu_count": os.cpu_count(),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_total": memory.total,
        "memory_available": memory.available,
        "memory_percent": memory.percent,
        "gpus": gpus.list_gpus(),
        # The GPUs this worker hands out to jobs (TRAINFARM_GPUS may hold some back).
        "gpu_slots": list(context.current().gpu_slots.indices),
        "running": running_attempts(client, me.key),
        "versions": software_versions(),
        "paused": paused,
    }


def running_attempts(client: redis.Redis, worker: str) -> list[dict[str, Any]]:
    """The attempts the attempt runner of `worker` registered under `node_attempts_key` (field
    `<job_id>-<attempt>`, value JSON {job_id, attempt, started, pid}), oldest job first.

    An entry whose process is gone was left by a worker that was killed before it could remove it:
    it is dropped, so a restarted node does not report jobs it no longer runs.
    """
    key = node_attempts_key(worker)
    running = []
    for field, raw in client.hgetall(key).items():
        try:
            entry = json.loads(raw)
            job_id, attempt = int(entry["job_id"]), int(entry["attempt"])
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed entry in %s: %r", key, raw)
            continue
        pid = entry.get("pid")
        if isinstance(pid, int) and not psutil.pid_exists(pid):
            client.hdel(key, field)
            continue
        running.append({**entry, "job_id": job_id, "attempt": attempt})
    return sorted(running, key=lambda e: (e["job_id"], e["attempt"]))


@functools.cache
def software_versions() -> dict[str, str | None]:
    """What a job will run with; None for what is not installed. Read once: it cannot change."""
    return {
        "python": platform.python_version(),
        "celery": celery.__version__,
        "trainfarm": _installed("trainfarm"),
        "torch": _installed("torch"),
        **gpus.driver_versions(),
    }


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _queues(consumer: Any) -> list[str]:
    # The live consumer follows queues added or cancelled at run time; it is rebuilt after a lost
    # broker connection, and the app's selection stands in while it is.
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        return sorted(q.name for q in task_consumer.queues)
    app = getattr(consumer, "app", None)
    return sorted(app.amqp.queues.consume_from) if app is not None else []


def _pool_name(pool: object) -> str | None:
    """The name given to `-P`: prefork, solo, threads, ..."""
    if pool is None:
        return None
    cls = type(pool)
    path = f"{cls.__module__}:{cls.__name__}"
    return next((alias for alias, target in ALIASES.items() if target == path), cls.__module__)


def _beat(consumer: Any) -> None:
    settings = get_settings()
    client = context.current().redis
    me = identity.current()
    intake = Intake(consumer, settings, client, me)
    caches = CacheUsage(settings)
    failing = False
    while not _stop.is_set():
        try:
            info = node_info(consumer, client, paused=intake.check())
            info["caches"] = caches.read()
            client.hset(NODES_KEY, me.key, json.dumps(info))
        except Exception as exc:  # a missed beat is harmless; the next one is seconds away
            if not failing:
                log.warning("heartbeat failed, retrying every %ss: %s", settings.heartbeat_interval, exc)
            failing = True
        else:
            if failing:
                log.info("heartbeat restored")
            failing = False
        _stop.wait(settings.heartbeat_interval)


def start_heartbeat(consumer: Any) -> None:
    _stop.clear()
    psutil.cpu_percent(interval=None)  # the first reading measures from here
    threading.Thread(target=_beat, args=(consumer,), name="heartbeat", daemon=True).start()


def stop_heartbeat() -> None:
    _stop.set()


def forget() -> None:
    """Remove this worker's beat at a clean exit: the master keeps the node's last state, and a
    sibling's beat no longer shows a worker that is gone."""
    try:
        context.current().redis.hdel(NODES_KEY, identity.current().key)
    except redis.RedisError as exc:  # the master ages it out instead
        log.info("could not remove this worker's heartbeat: %s", exc)
