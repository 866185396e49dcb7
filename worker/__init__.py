"""The trainfarm worker: `celery -A worker worker -Q gpu` runs jobs from the `gpu` queue.

The Celery app is loaded on first access, so a training process importing `worker.runtime`
(possibly inside a container without Celery) does not pay for it.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
