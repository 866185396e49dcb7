"""The farm's gauges and counters read at scrape time: jobs per status, queue depth, refused
messages and Redis memory."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from master.metrics.queue_depth import QueueDepthReader
from master.models import Job
from shared.celery_config import QUEUES
from shared.signing import Refusal
from shared.status import TERMINAL, JobStatus
from shared.streams import REFUSED_MESSAGES_KEY


class FarmCollector(Collector):
    """Jobs per status and queue depth, read at scrape time so they are never stale.

    :param broker: the farm's Redis (refused messages, memory).
    :param depth: reads the task queues, on Redis or on RabbitMQ (queue_depth.py).
    """

    def __init__(self, engine: Engine, broker: redis.Redis, depth: QueueDepthReader) -> None:
        self._engine = engine
        self._broker = broker
        self._depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        jobs = GaugeMetricFamily("trainfarm_jobs", "Jobs by status", labels=["status"])
        with Session(self._engine) as session:
            counts = dict(session.exec(select(Job.status, func.count()).group_by(Job.status)).all())  # type: ignore[call-overload]
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        # Imported here: master.job_usage reaches this package through master.lifecycle.
        from master.job_usage import count_idle_gpu_jobs

        with Session(self._engine) as session:
            idle = count_idle_gpu_jobs(session)
        yield GaugeMetricFamily(
            "trainfarm_jobs_gpu_idle",
            "Running jobs whose GPUs the idle rule flagged (under gpu_idle_threshold for gpu_idle_after s)",
            value=idle,
        )
        depth = GaugeMetricFamily(
            "trainfarm_queue_depth",
            "Task messages waiting on the broker for a worker to take; deliveries a worker holds"
            " unacknowledged are not counted (RabbitMQ's message_count); no sample while the"
            " broker cannot be read",
            labels=["queue"],
        )
        for queue, waiting in self._depth.read(QUEUES).items():
            depth.add_metric([queue], waiting)
        yield depth
        refused = CounterMetricFamily(
            "trainfarm_messages_refused",
            "Task messages workers refused to run (unsigned, tampered with, another key, expired, replayed)",
            labels=["reason"],
        )
        refusals: dict[bytes, bytes] = self._broker.hgetall(REFUSED_MESSAGES_KEY)  # type: ignore[assignment]
        for reason in Refusal:
            refused.add_metric([reason.value], int(refusals.get(reason.value.encode(), 0)))
        yield refused
        # Jobs never leave an end state, so the counts of ended jobs only grow: a counter.
        ended = CounterMetricFamily(
            "trainfarm_jobs_ended", "Jobs that reached an end state", labels=["status"]
        )
        for status in sorted(TERMINAL):
            ended.add_metric([status.value], counts.get(status.value, 0))
        yield ended
        memory = self._broker.info("memory")
        yield GaugeMetricFamily(
            "trainfarm_redis_memory_used_bytes", "Memory Redis uses", int(memory.get("used_memory", 0))
        )
        yield GaugeMetricFamily(
            "trainfarm_redis_memory_max_bytes",
            "Redis's maxmemory (0: no limit); at it Redis refuses writes",
            int(memory.get("maxmemory", 0)),
        )
