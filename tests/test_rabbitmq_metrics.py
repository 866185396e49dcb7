"""trainfarm_queue_depth with the task queues on RabbitMQ: a real master counts the messages no
worker has taken (a passive queue declare), and the reader under it keeps one connection, opens it
again after a cut, and leaves the gauge out, quickly, when the broker is down or silent, while
/metrics still answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import amqp  # type: ignore[import-untyped]
import httpx
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine

from master.metrics import (
    QueueDepthReader,
    RabbitMQQueueDepth,
    RedisQueueDepth,
    make_registry,
    rabbitmq_connection,
)
from master.metrics.queue_depth import RABBITMQ_TIMEOUT
from shared.redaction import with_password
from shared.settings import Settings
from tests.conftest import wait_for, wait_status
from tests.rabbitmq_support import database_url, rabbitmq_server, settings
from tests.relay_support import Relay
from tests.test_api import beat_as_a_worker
from trainfarm.services import RedisServer
from trainfarm.services.farm import MasterProcess
from trainfarm.services.rabbitmq import RabbitMQServer
from trainfarm.services.tls import make_certificates

__all__ = ["database_url", "rabbitmq_server", "settings"]  # fixtures, imported so pytest finds them here

#: Queues of the reader tests: not the farm's, whose arguments Celery declares.
QUEUES = ["depth-a", "depth-b"]
#: Short timeouts for the reader tests, so a silent broker costs them little.
TIMEOUT = 0.5


@pytest.fixture
def queues(rabbitmq_server: RabbitMQServer) -> Iterator[list[str]]:
    """`depth-a` declared with two messages waiting, `depth-b` never declared."""
    rabbitmq_server.delete_queues(QUEUES)
    with rabbitmq_server.connection() as connection:
        channel = connection.default_channel
        channel.queue_declare("depth-a", durable=False, auto_delete=False)
        for body in ("one", "two"):
            channel.basic_publish(amqp.Message(body), routing_key="depth-a")
        # Publishing is not confirmed: wait for the queue to hold both.
        wait_for(lambda: channel.queue_declare("depth-a", passive=True).message_count == 2, timeout=10)
    yield QUEUES
    rabbitmq_server.delete_queues(QUEUES)


def relayed(server: RabbitMQServer, relay: Relay) -> str:
    """The server's URL through `relay`."""
    return server.url.replace(f":{server.port}/", f":{relay.port}/")


def depths(master: MasterProcess) -> dict[str, float]:
    answer = httpx.get(
        f"{master.url}/metrics", headers={"Authorization": f"Bearer {master.token}"}, timeout=30
    )
    answer.raise_for_status()
    return queue_depth(answer.text)


def queue_depth(text: str) -> dict[str, float]:
    """trainfarm_queue_depth's samples in an exposition, by queue."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert "trainfarm_jobs" in families  # the rest of the scrape is there either way
    return {s.labels["queue"]: s.value for s in families["trainfarm_queue_depth"].samples}


def test_the_master_counts_messages_waiting_on_rabbitmq_until_a_worker_takes_them(
    master, api, settings, start_worker
):
    # Slots as of a worker on cpu and no worker process: the messages are sent, and stay queued.
    beat_as_a_worker(redis.Redis.from_url(settings.redis_connection_url()), ["cpu"], concurrency=3)
    ids = [api.post("/jobs", json={"command": ["true"], "queue": "cpu"}).json()["id"] for _ in range(3)]
    # gpu was never sent to, so RabbitMQ has no such queue: 0, not a missing sample.
    wait_for(lambda: depths(master) == {"gpu": 0, "cpu": 3}, timeout=30, what="three messages on cpu")
    assert not redis.Redis.from_url(settings.redis_connection_url()).exists("cpu")  # none on Redis

    start_worker(queues="cpu")
    for job in ids:
        assert wait_status(api, job, {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"
    assert depths(master) == {"gpu": 0, "cpu": 0}


@pytest.fixture(params=["redis", "rabbitmq"])
def reader(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[QueueDepthReader]:
    """Each backend's reader, with two messages waiting in `depth-a` and `depth-b` never used."""
    if request.param == "redis":
        broker = redis.Redis.from_url(redis_server.url)
        broker.delete(*[f"{q}:{step}" if step else q for q in QUEUES for step in range(10)])
        # The transport's lists: priority step 0 is the queue's own name, the others carry a suffix.
        broker.lpush("depth-a", "one")
        broker.lpush("depth-a:5", "two")
        yield RedisQueueDepth(broker)
        broker.delete("depth-a", "depth-a:5")
    else:
        server: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        request.getfixturevalue("queues")
        yield RabbitMQQueueDepth(rabbitmq_connection(Settings(broker_url=server.url), TIMEOUT))


def test_both_readers_count_what_waits_and_nothing_in_a_queue_never_used(reader: QueueDepthReader):
    assert reader.read(QUEUES) == {"depth-a": 2, "depth-b": 0}


def test_the_reader_counts_ready_messages_and_opens_its_connection_again_after_a_cut(
    rabbitmq_server: RabbitMQServer, queues: list[str], caplog: pytest.LogCaptureFixture
):
    relay = Relay(("127.0.0.1", rabbitmq_server.port))
    reader = RabbitMQQueueDepth(
        rabbitmq_connection(Settings(broker_url=relayed(rabbitmq_server, relay)), TIMEOUT)
    )
    try:
        assert reader.read(queues) == {"depth-a": 2, "depth-b": 0}
        assert reader.read(queues) == {"depth-a": 2, "depth-b": 0}
        assert relay.accepted == 1  # one connection, kept between reads
        # A delivery a consumer holds unacknowledged is not waiting any more.
        with rabbitmq_server.connection() as consumer:
            assert consumer.default_channel.basic_get("depth-a", no_ack=False) is not None
            assert reader.read(queues) == {"depth-a": 1, "depth-b": 0}
        wait_for(lambda: reader.read(queues)["depth-a"] == 2, timeout=10, what="the delivery back")

        relay.cut()  # the broker restarting, as the kept connection sees it
        assert reader.read(queues) == {"depth-a": 2, "depth-b": 0}
        assert relay.accepted == 2

        relay.refuse()  # the broker down: no reading, and said once
        with caplog.at_level(logging.INFO, logger="master.metrics.queue_depth"):
            assert reader.read(queues) == {}
            assert reader.read(queues) == {}
            relay.listen()
            assert reader.read(queues) == {"depth-a": 2, "depth-b": 0}
        said = [r.getMessage() for r in caplog.records if r.name == "master.metrics.queue_depth"]
        assert len(said) == 2 and "not read" in said[0] and said[1] == "queue depth: RabbitMQ answers again"
    finally:
        relay.close()


def test_a_silent_broker_costs_a_scrape_its_timeouts_only(rabbitmq_server: RabbitMQServer, queues: list[str]):
    relay = Relay(("127.0.0.1", rabbitmq_server.port))
    reader = RabbitMQQueueDepth(
        rabbitmq_connection(Settings(broker_url=relayed(rabbitmq_server, relay)), TIMEOUT)
    )
    try:
        assert reader.read(queues) == {"depth-a": 2, "depth-b": 0}
        relay.silent = True  # takes every byte, answers none: the kept connection, then a fresh one
        start = time.monotonic()
        assert reader.read(queues) == {}
        # A read on the kept connection, then the connect of a fresh one: a timeout each.
        assert time.monotonic() - start < 3 * TIMEOUT + 1
        assert relay.accepted == 2
        relay.silent = False  # the silent connections stay silent; a new one is relayed
        relay.cut()
        assert reader.read(queues) == {"depth-a": 2, "depth-b": 0}
    finally:
        relay.close()


def test_metrics_answer_without_the_depth_while_the_broker_cannot_be_read(
    engine: Engine, redis_server: RedisServer
):
    """The whole registry as /metrics serves it, the farm's broker a server that never speaks AMQP."""
    silent = Relay(None)
    try:
        url = f"amqp://trainfarm:secret@127.0.0.1:{silent.port}/trainfarm"
        settings = Settings(redis_url=redis_server.url, broker_url=url)
        registry = make_registry(engine, redis.Redis.from_url(redis_server.url), settings)
        start = time.monotonic()
        assert queue_depth(generate_latest(registry).decode()) == {}
        assert time.monotonic() - start < RABBITMQ_TIMEOUT + 2  # a fresh connection is tried once
    finally:
        silent.close()


def test_the_reader_checks_the_brokers_certificate_as_the_publisher_does(tmp_path: Path):
    """amqps:// with `broker_password` apart: the reader connects with the CA of `broker_ca_file`
    and reads nothing from a server whose certificate another CA signed."""
    certs, other = make_certificates(tmp_path / "tls"), make_certificates(tmp_path / "other")
    with RabbitMQServer(tmp_path / "rabbitmq-tls", tls=certs.server) as server:
        with server.connection() as connection:
            connection.default_channel.queue_declare("cpu", durable=False, auto_delete=False)
            connection.default_channel.basic_publish(amqp.Message("m"), routing_key="cpu")
        bare_url = with_password(server.url, "").replace(":@", "@")
        good = Settings(
            broker_url=bare_url,
            broker_password=SecretStr(server.password),
            broker_ca_file=certs.server.ca_file,
        )
        wait_for(
            lambda: RabbitMQQueueDepth(rabbitmq_connection(good)).read(["cpu", "gpu"]) == {"cpu": 1, "gpu": 0}
        )
        wrong = good.model_copy(update={"broker_ca_file": other.server.ca_file})
        assert RabbitMQQueueDepth(rabbitmq_connection(wrong)).read(["cpu"]) == {}
