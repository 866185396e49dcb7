"""A node's heartbeat: what it is and what it offers, written to Redis every few seconds."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import threading
import time
from typing import Any

import celery
import psutil

from shared.settings import get_settings
from shared.streams import NODES_KEY
from worker import context

log = logging.getLogger(__name__)
_stop = threading.Event()


def node_info(consumer: Any) -> dict[str, Any]:
    settings = get_settings()
    worker = getattr(consumer, "controller", None)
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer is not None else []
    memory = psutil.virtual_memory()
    return {
        "name": settings.node_name,
        "queues": queues,
        "pool": type(getattr(worker, "pool", None)).__module__.rsplit(".", 1)[-1] if worker else None,
        "concurrency": getattr(worker, "concurrency", None),
        "os": f"{platform.system()} {platform.release()}",
        "cpu_count": os.cpu_count(),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_total": memory.total,
        "memory_available": memory.available,
        "gpus": [],
        "versions": {"python": sys.version.split()[0], "celery": celery.__version__},
        "pid": os.getpid(),
        "ts": time.time(),
    }


def _beat(consumer: Any) -> None:
    settings = get_settings()
    client = context.current().redis
    while not _stop.is_set():
        try:
            info = node_info(consumer)
            client.hset(NODES_KEY, settings.node_name, json.dumps(info))
        except Exception as exc:  # a missed beat is harmless; the next one is seconds away
            log.warning("heartbeat failed: %s", exc)
        _stop.wait(settings.heartbeat_interval)


def start_heartbeat(consumer: Any) -> None:
    _stop.clear()
    threading.Thread(target=_beat, args=(consumer,), name="heartbeat", daemon=True).start()


def stop_heartbeat() -> None:
    _stop.set()
