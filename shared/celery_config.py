"""Celery settings the master (publisher) and the workers (consumers) must agree on.

The task queues live on Redis (the default) or on RabbitMQ (`broker_url` = `amqp://` or
`amqps://`); events, logs, leases and flags stay on Redis either way.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

from shared.redaction import with_password
from shared.redis_client import tls_options
from shared.settings import Settings

#: The one task workers run; the master sends it by name and never imports the worker.
RUN_ATTEMPT_TASK = "trainfarm.run_attempt"
QUEUES = ("gpu", "cpu")
#: Priorities a RabbitMQ queue keeps apart (`x-max-priority`): the spec's 0..9.
MAX_PRIORITY = 9


def uses_rabbitmq(broker_url: str) -> bool:
    return broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))


def broker_connection_url(settings: Settings) -> str:
    """The task broker to connect to: `broker_url` with `broker_password` in place of its own
    password, or the Redis URL when no broker is set."""
    if settings.broker_url is None:
        return settings.redis_connection_url()
    if settings.broker_password is None:
        return settings.broker_url
    return with_password(settings.broker_url, quote(settings.broker_password.get_secret_value(), safe=""))


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_connection_url(settings)
    config: dict[str, Any] = {
        "broker_url": url,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # One message per worker process at a time: on Redis (acknowledged at the end) a busy worker
        # holds no job a free one could run; on RabbitMQ, see below.
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "gpu",
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
    }
    config |= _rabbitmq_config(settings) if uses_rabbitmq(url) else _redis_config(settings)
    return config


def _redis_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        # A task is acknowledged only when the attempt is over, so a worker killed mid-run does not
        # swallow it. Redis gives an unacknowledged message to another worker after the visibility
        # timeout, and the attempt's lease lets that copy run nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
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


def _rabbitmq_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        # RabbitMQ closes the channel of a delivery left unacknowledged past its consumer_timeout
        # (30 minutes by default) and hands every unacknowledged message of that channel out
        # again: with acks_late, every job longer than that would be redelivered, its worker
        # reconnecting each time. So a message is acknowledged as a worker process takes it. What
        # acks_late protected is covered otherwise: the attempt lease lets a redelivered copy run
        # nothing, a worker that stops gives its job back (a new message), and the reaper retries
        # the job of a worker that died once its lease expires. The cost: a worker whose processes
        # are all busy holds one more message per process, unacknowledged, which goes back to the
        # queue when the worker stops or at the broker's consumer_timeout; and a worker killed in
        # the second between taking a message and taking its lease loses it (the master's sweep
        # sends it again after `message_max_age / 2`).
        "task_acks_late": False,
        # A lost connection never kills running attempts (Celery 6 is to make that the default).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Durable queues (Celery's default) with priorities: 9 is served first.
        "task_queue_max_priority": MAX_PRIORITY,
        "task_default_priority": 0,
        # Publisher confirms: `send_task` returns once RabbitMQ has the (persistent) message.
        "broker_transport_options": {"confirm_publish": True},
    }
    if url_is_tls(settings):
        config["broker_use_ssl"] = rabbitmq_tls_options(settings)
    return config


def url_is_tls(settings: Settings) -> bool:
    return (settings.broker_url or "").startswith("amqps://")


def rabbitmq_tls_options(settings: Settings) -> dict[str, Any]:
    """py-amqp's TLS arguments: the server's certificate is always verified, against
    `broker_ca_file` or the system's CAs, and for the URL's host name."""
    ca_file = settings.broker_ca_file
    if ca_file is None:
        paths = ssl.get_default_verify_paths()
        ca = paths.cafile or paths.openssl_cafile
    else:
        ca = str(ca_file)
    # server_hostname None: kombu puts the URL's host there, and the name is checked.
    return {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": ca, "server_hostname": None}


def celery_priority(spec_priority: int, rabbitmq: bool = False) -> int:
    """Spec priority 9 is most urgent: RabbitMQ serves 9 first, the Redis transport 0."""
    return spec_priority if rabbitmq else 9 - spec_priority
