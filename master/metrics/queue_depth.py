"""Queue depth readers: how many task messages wait on the broker in each Celery queue, read from
wherever the queues live (Redis or RabbitMQ, shared/celery_config.py)."""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import redis
from amqp.exceptions import NotFound
from kombu import Connection

from shared.celery_config import broker_connection_url, celery_config, uses_rabbitmq
from shared.settings import Settings

log = logging.getLogger(__name__)

#: Seconds each step of a RabbitMQ read may take (TCP connect, TLS and AMQP handshakes, each reply):
#: with one retry, a scrape of a broker that went silent still answers within Prometheus's
#: default 10 s scrape timeout.
RABBITMQ_TIMEOUT = 2.0


class QueueDepthReader(Protocol):
    def read(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each of `queues`; a queue that could not be read has no entry."""
        ...


class RedisQueueDepth:
    """The Redis transport's lists: one per priority step, "gpu", "gpu:1", ... "gpu:9". A message a
    worker has taken waits in the transport's unacked hash instead, and is not counted."""

    def __init__(self, broker: redis.Redis) -> None:
        self._broker = broker

    def read(self, queues: Sequence[str]) -> dict[str, int]:
        keys = {queue: [queue, *(f"{queue}:{step}" for step in range(1, 10))] for queue in queues}
        pipe = self._broker.pipeline(transaction=False)
        for key in itertools.chain.from_iterable(keys.values()):
            pipe.llen(key)
        lengths = iter(pipe.execute())
        return {queue: sum(itertools.islice(lengths, len(names))) for queue, names in keys.items()}


class RabbitMQQueueDepth:
    """Asks RabbitMQ with a passive queue declare, over one connection kept between scrapes.

    The broker's message_count is the queue's ready messages: deliveries a worker holds
    unacknowledged (a busy worker's prefetched one, say) are not in it.

    :param connection: a kombu connection to the broker, not yet open: it is opened at the first
        read, and again at the read after an error. Its timeouts bound a scrape.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._channel: Any = None
        # Two scrapes may run at once (each in a thread of the pool); a channel is not for two.
        self._lock = threading.Lock()
        self._failing = False
        # The connection goes when the reader does, at the latest as the master exits.
        weakref.finalize(self, _close, connection)

    def read(self, queues: Sequence[str]) -> dict[str, int]:
        with self._lock:
            # A connection kept since the last scrape may have died meanwhile (a broker restart):
            # one more try, on a fresh one. A fresh one that fails is not tried again.
            kept = self._connection.connected
            try:
                depths = self._declare(queues)
            except Exception as error:  # the scrape goes on without the broker, whatever it did
                self._drop()
                if not kept:
                    return self._unread(error)
                try:
                    depths = self._declare(queues)
                except Exception as error:
                    self._drop()
                    return self._unread(error)
            if self._failing:
                log.info("queue depth: RabbitMQ answers again")
                self._failing = False
            return depths

    def _declare(self, queues: Sequence[str]) -> dict[str, int]:
        depths = {}
        for queue in queues:
            if self._channel is None or not self._channel.is_open:
                self._connection.ensure_connection(max_retries=0)  # kombu would sleep and retry
                self._channel = self._connection.channel()
            try:
                depths[queue] = self._channel.queue_declare(queue=queue, passive=True).message_count
            except NotFound:
                # Celery declares a queue as it first sends to it or a worker consumes from it:
                # none declared, none waits. (py-amqp reopens the channel the broker closed.)
                depths[queue] = 0
        return depths

    def _drop(self) -> None:
        self._channel = None
        self._connection.collect()  # no closing handshake: the socket may be dead

    def _unread(self, error: Exception) -> dict[str, int]:
        # Once per outage: Prometheus scrapes every few seconds.
        if not self._failing:
            log.warning("queue depth: RabbitMQ not read, trainfarm_queue_depth left out: %s", error)
            self._failing = True
        return {}


def _close(connection: Connection) -> None:
    try:
        connection.release()
    except Exception:  # a dead socket: there is nothing to say goodbye to
        connection.collect()


def rabbitmq_connection(settings: Settings, timeout: float = RABBITMQ_TIMEOUT) -> Connection:
    """A kombu connection (not yet open) to the task broker as the master's publisher reaches it,
    from celery_config: the same URL, password and TLS checks, each step bounded by `timeout`."""
    config = celery_config(settings)
    return Connection(
        config["broker_url"],
        ssl=config.get("broker_use_ssl", False),
        connect_timeout=timeout,
        transport_options={"read_timeout": timeout, "write_timeout": timeout},
    )


def queue_depth_reader(settings: Settings, broker: redis.Redis) -> QueueDepthReader:
    """The reader for wherever the task queues live: RabbitMQ for an amqp(s):// `broker_url`, else
    the Redis of `broker`."""
    if uses_rabbitmq(broker_connection_url(settings)):
        return RabbitMQQueueDepth(rabbitmq_connection(settings))
    return RedisQueueDepth(broker)
