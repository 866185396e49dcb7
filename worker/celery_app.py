"""The Celery application of compute nodes."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from shared.celery_config import celery_config
from shared.settings import get_settings

app = Celery("trainfarm-worker", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()))


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    from worker.heartbeat import start_heartbeat

    start_heartbeat(sender)


@signals.worker_shutting_down.connect
def _stop_heartbeat(**_: Any) -> None:
    from worker.heartbeat import stop_heartbeat

    stop_heartbeat()
