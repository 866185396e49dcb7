"""Prometheus metrics of the master, served at /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from master.models import Job
from shared.celery_config import QUEUES
from shared.signing import Refusal
from shared.status import JobStatus
from shared.streams import REFUSED_MESSAGES_KEY

if TYPE_CHECKING:
    from master.log_hub import LogHub

EVENTS_APPLIED = Counter("trainfarm_events_applied_total", "Worker events applied to the database", ["kind"])
JOBS_SUBMITTED = Counter("trainfarm_jobs_submitted_total", "Jobs accepted by the API", ["queue"])
#: reason: "invalid" (the entry is not an event of a known kind within bounds) or "apply" (applying it failed).
EVENTS_DEAD_LETTERED = Counter(
    "trainfarm_events_dead_lettered_total", "Worker events moved to tf:events:dead unapplied", ["reason"]
)
EVENTS_REFUSED = Counter(
    "trainfarm_events_refused_total",
    "Worker events ignored: they came from a worker other than the one holding the attempt",
)
HANDBACKS = Counter("trainfarm_handbacks_total", "Attempts handed back by a worker shutting down")
STATUS_MOVES_REFUSED = Counter(
    "trainfarm_status_moves_refused_total", "Status changes refused by the transition tables", ["entity"]
)
LOOP_ERRORS = Counter(
    "trainfarm_loop_errors_total", "Errors caught in the master's background loops", ["loop"]
)
ADMITTED = Counter("trainfarm_admitted_total", "Attempts admission let start (their messages sent)")
PREEMPTED = Counter("trainfarm_preempted_total", "Running attempts preempted for jobs of higher priority")
ADMISSION_SECONDS = Histogram(
    "trainfarm_admission_decision_seconds",
    "Time of one admission decision over every queue, acted on",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
)
HTTP_LATENCY = Histogram(
    "trainfarm_http_request_seconds",
    "API request latency",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class FarmCollector(Collector):
    """Jobs per status and queue depth, read at scrape time so they are never stale."""

    def __init__(self, engine: Engine, broker: redis.Redis) -> None:
        self._engine = engine
        self._broker = broker

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        jobs = GaugeMetricFamily("trainfarm_jobs", "Jobs by status", labels=["status"])
        with Session(self._engine) as session:
            counts = dict(session.exec(select(Job.status, func.count()).group_by(Job.status)).all())  # type: ignore[call-overload]
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        depth = GaugeMetricFamily(
            "trainfarm_queue_depth", "Messages waiting in a Celery queue", labels=["queue"]
        )
        for queue in QUEUES:
            # The Redis transport keeps one list per priority step: "gpu", "gpu:1", ... "gpu:9".
            pipe = self._broker.pipeline(transaction=False)
            for key in [queue] + [f"{queue}:{p}" for p in range(1, 10)]:
                pipe.llen(key)
            depth.add_metric([queue], sum(pipe.execute()))
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


class RequestTimer:
    """Observes each request's latency by route, up to the start of its response.

    Plain ASGI on purpose: Starlette's `@app.middleware("http")` costs a task and a memory stream per
    request, about a fifth of a job submission's time on a 2-core machine (bench/submit.py).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            # The router has put the matched route into this same scope by the time we are answered.
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_LATENCY.labels(scope["method"], route, str(status)).observe(time.perf_counter() - start)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not observed:  # an unhandled error: the server answers 500
                observe(500)


def make_registry(engine: Engine, broker: redis.Redis) -> CollectorRegistry:
    """One registry per app: the process-wide counters plus this app's view of the farm."""
    registry = CollectorRegistry()
    for collector in (
        EVENTS_APPLIED,
        JOBS_SUBMITTED,
        HTTP_LATENCY,
        EVENTS_DEAD_LETTERED,
        EVENTS_REFUSED,
        HANDBACKS,
        STATUS_MOVES_REFUSED,
        LOOP_ERRORS,
        ADMITTED,
        PREEMPTED,
        ADMISSION_SECONDS,
    ):
        registry.register(collector)
    registry.register(FarmCollector(engine, broker))
    return registry


LOG_STREAMS_REFUSED = Counter(
    "trainfarm_log_streams_refused_total", "Live-log streams answered 429: the client held its cap already"
)
LOG_FOLLOWERS_LAGGED = Counter(
    "trainfarm_log_followers_lagged_total", "Times a slow live-log follower fell behind and re-read its log"
)


class LogHubCollector(Collector):
    """Live-log followers and the Redis reads that serve them, read at scrape time."""

    def __init__(self, hub: LogHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fanout = self._hub.fanout
        yield GaugeMetricFamily("trainfarm_log_followers", "Live-log streams open on a job", fanout.followers)
        yield GaugeMetricFamily("trainfarm_log_followed_jobs", "Jobs with a live-log follower", fanout.jobs)
        yield GaugeMetricFamily(
            "trainfarm_log_readers", "Blocking Redis reads serving all live-log followers", self._hub.readers
        )


def register_log_hub(registry: CollectorRegistry, hub: LogHub) -> None:
    registry.register(LOG_STREAMS_REFUSED)
    registry.register(LOG_FOLLOWERS_LAGGED)
    registry.register(LogHubCollector(hub))
