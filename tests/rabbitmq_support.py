"""A private RabbitMQ for the broker tests (session fixture), and farm settings that put Celery's
task queues on it while events, logs, leases and flags stay on the suite's Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.celery_config import QUEUES
from shared.settings import Settings
from trainfarm.services.rabbitmq import RabbitMQServer, unavailable_reason

ON_CI = os.environ.get("CI") == "true"
#: The suite's RabbitMQ closes a channel whose delivery stays unacknowledged this long (ms), where
#: RabbitMQ's default is 30 minutes: every job longer than that on it shows the trap is avoided.
CONSUMER_TIMEOUT_MS = 3000


def require_rabbitmq() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if ON_CI:
        pytest.fail(f"{reason}: the RabbitMQ broker tests must run under CI")
    pytest.skip(f"LOUD SKIP: {reason}; the RabbitMQ broker tests did not run")


@pytest.fixture(scope="session")
def rabbitmq_server(services_dir: Path) -> Iterator[RabbitMQServer]:
    require_rabbitmq()
    with RabbitMQServer(services_dir / "rabbitmq", consumer_timeout=CONSUMER_TIMEOUT_MS) as server:
        yield server


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only, for a module that imports it: the database is not what the broker tests are
    about."""
    return f"sqlite:///{tmp_path / 'master.db'}"


@pytest.fixture
def settings(settings: Settings, rabbitmq_server: RabbitMQServer) -> Settings:
    """The conftest farm, its task queues on RabbitMQ, for a module that imports it."""
    return on_rabbitmq(settings, rabbitmq_server)


def on_rabbitmq(settings: Settings, server: RabbitMQServer) -> Settings:
    """`settings` with the task queues on `server`, emptied: each test starts with none."""
    server.delete_queues(list(QUEUES))
    return settings.model_copy(update={"broker_url": server.url})


def waiting_task_ids(server: RabbitMQServer, queue: str) -> list[str]:
    """The task ids of the messages waiting in `queue`, in the order RabbitMQ hands them out;
    none is acknowledged, so all go back to the queue as the connection closes."""
    ids = []
    with server.connection() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            ids.append(str(message.headers["id"]))
    return ids
