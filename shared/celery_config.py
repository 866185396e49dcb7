"""Celery settings the master (publisher) and the workers (consumers) must agree on."""

from __future__ import annotations

from typing import Any

from shared.redis_client import tls_options
from shared.settings import Settings

#: The one task workers run; the master sends it by name and never imports the worker.
RUN_ATTEMPT_TASK = "trainfarm.run_attempt"
QUEUES = ("gpu", "cpu")


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.redis_connection_url(),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # A task is acknowledged only when the attempt is over, so a worker killed mid-run does not
        # swallow it; one message at a time, so a busy worker never holds jobs a free one could run.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "gpu",
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
        "broker_transport_options": {
            # Priorities 0..9 become separate Redis lists; 0 is served first.
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.broker_visibility_timeout,
        },
    }
    if tls := tls_options(settings):  # rediss://
        # Without it kombu connects with CERT_NONE, trusting any server; Flower reads it too.
        config["broker_use_ssl"] = tls
    return config


def celery_priority(spec_priority: int) -> int:
    """Spec priority 9 is most urgent; the Redis transport serves 0 first."""
    return 9 - spec_priority
