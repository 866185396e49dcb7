"""Prometheus metrics of the master, served at /metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, case, func
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from master.fairshare.usage import owner_key
from master.fairshare.waiting import WAITING_QUERY
from master.models import Job, JobAttempt, Node, as_utc, utcnow
from master.nodes import FORGET_AFTER_SECONDS, to_public
from shared.celery_config import QUEUES
from shared.settings import get_settings
from shared.signing import Refusal
from shared.status import TERMINAL, JobStatus
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
#: Bucket bounds in seconds, from a free farm's moments to a busy one's hours.
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)
ADMISSION_WAIT = Histogram(
    "trainfarm_admission_wait_seconds",
    "Time an attempt waited for admission: from being queued (or its retry backoff ending) to admitted",
    ["queue"],
    buckets=WAIT_BUCKETS,
)
DISPATCH_LATENCY = Histogram(
    "trainfarm_dispatch_latency_seconds",
    "Time from an attempt's admission to its start on a worker (message, pick-up, set-up)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
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
        # Imported here: master.job_usage reaches this module through master.lifecycle.
        from master.job_usage import count_idle_gpu_jobs

        with Session(self._engine) as session:
            idle = count_idle_gpu_jobs(session)
        yield GaugeMetricFamily(
            "trainfarm_jobs_gpu_idle",
            "Running jobs whose GPUs the idle rule flagged (under gpu_idle_threshold for gpu_idle_after s)",
            value=idle,
        )
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


def _waiting_by_queue() -> Any:
    """Per queue: how many jobs wait for admission (the admitter's own definition of waiting), the
    oldest first-time wait's start, and the earliest end of a retry backoff."""
    waiting = WAITING_QUERY.whereclause
    assert waiting is not None  # the query has its WHERE
    return (
        select(  # type: ignore[call-overload]
            Job.queue,
            func.count(),
            func.min(case((col(JobAttempt.not_before).is_(None), JobAttempt.created_at))),
            func.min(JobAttempt.not_before),
        )
        .select_from(JobAttempt)
        .join(Job, Job.id == JobAttempt.job_id)  # type: ignore[arg-type]
        .where(waiting)
        .group_by(Job.queue)
    )


#: Built once, like the admitter's own queries.
WAITING_BY_QUEUE = _waiting_by_queue()
RUNNING_DEVICES = (
    select(Job.owner, Job.queue, func.sum(Job.devices))  # type: ignore[call-overload]
    .join(JobAttempt, JobAttempt.job_id == Job.id)  # type: ignore[arg-type]
    .where(JobAttempt.status == JobStatus.RUNNING)
    .group_by(Job.owner, Job.queue)
)


class AdmissionCollector(Collector):
    """What waits for admission per queue, and the devices each user's running jobs hold."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        with Session(self._engine) as session:
            waiting = list(session.connection().execute(WAITING_BY_QUEUE))
            running = list(session.connection().execute(RUNNING_DEVICES))
        jobs = GaugeMetricFamily(
            "trainfarm_queue_waiting_jobs",
            "Jobs waiting for admission (retry backoffs included)",
            labels=["queue"],
        )
        oldest = GaugeMetricFamily(
            "trainfarm_queue_oldest_wait_seconds",
            "How long the longest-waiting job ready to start has waited for admission (0: none waits)",
            labels=["queue"],
        )
        by_queue = {queue: (count, first, backoff) for queue, count, first, backoff in waiting}
        for queue in sorted(set(QUEUES) | set(by_queue)):
            count, first, backoff = by_queue.get(queue, (0, None, None))
            # A job in retry backoff waits from the end of its backoff; the earliest end, once
            # passed, is the longest such wait.
            since = [as_utc(t) for t in (first, backoff) if t is not None and as_utc(t) <= now]
            jobs.add_metric([queue], count)
            oldest.add_metric([queue], (now - min(since)).total_seconds() if since else 0.0)
        yield jobs
        yield oldest
        devices = GaugeMetricFamily(
            "trainfarm_user_running_devices",
            "Devices (GPUs on gpu, processes on cpu) a user's running jobs hold",
            labels=["user", "queue"],
        )
        for owner, queue, held in running:
            devices.add_metric([owner_key(owner), queue], held or 0)
        yield devices


class NodeCollector(Collector):
    """Each node's state and its GPUs' readings, from the heartbeats the nodes table keeps."""

    def __init__(self, engine: Engine, offline_after: float) -> None:
        self._engine = engine
        self._offline_after = offline_after

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with Session(self._engine) as session:
            nodes = [to_public(node, self._offline_after) for node in session.exec(select(Node)).all()]
        online = GaugeMetricFamily(
            "trainfarm_node_online",
            "1 while a node beats, 0 once it has been silent too long",
            labels=["node"],
        )
        serves = GaugeMetricFamily(
            "trainfarm_node_queue",
            "1 for each queue an online node's workers take jobs from",
            labels=["node", "queue"],
        )
        gpus = GpuFamilies()
        now = utcnow()
        for node in nodes:
            if (now - node.last_seen).total_seconds() > FORGET_AFTER_SECONDS:
                continue  # gone a day: the master forgot its beat too; no alert forever
            online.add_metric([node.name], 1.0 if node.online else 0.0)
            if not node.online:
                continue  # what a silent node said last is not what its GPUs do now
            for queue in node.queues:
                serves.add_metric([node.name, queue], 1.0)
            gpus.add_node(node.name, node.info)
        yield online
        yield serves
        yield from gpus.families()


class GpuFamilies:
    """The per-GPU gauges of the online nodes, from the `gpus` list of their beats (worker/gpus.py);
    a reading the device does not give (None) has no sample."""

    def __init__(self) -> None:
        gpu = ["node", "gpu"]
        self.utilization = GaugeMetricFamily(
            "trainfarm_gpu_utilization_ratio", "Share of time the GPU was busy (0..1)", labels=[*gpu, "name"]
        )
        self.memory_used = GaugeMetricFamily(
            "trainfarm_gpu_memory_used_bytes", "GPU memory in use", labels=gpu
        )
        self.memory_total = GaugeMetricFamily("trainfarm_gpu_memory_total_bytes", "GPU memory", labels=gpu)
        self.temperature = GaugeMetricFamily(
            "trainfarm_gpu_temperature_celsius", "GPU temperature, where NVML gives it", labels=gpu
        )
        self.job_slot = GaugeMetricFamily(
            "trainfarm_gpu_job_slot", "1 if the node hands the GPU out to jobs, 0 if held back", labels=gpu
        )

    def add_node(self, node: str, info: dict[str, Any]) -> None:
        slots = {s for s in _list(info.get("gpu_slots")) if isinstance(s, int)}
        for entry in _list(info.get("gpus")):
            index = entry.get("index") if isinstance(entry, dict) else None
            if not isinstance(index, int) or isinstance(index, bool):
                continue
            labels = [node, str(index)]
            if (util := _reading(entry.get("utilization_percent"))) is not None:
                self.utilization.add_metric([*labels, str(entry.get("name") or "")], util / 100)
            for family, field in (
                (self.memory_used, "memory_used"),
                (self.memory_total, "memory_total"),
                (self.temperature, "temperature_c"),
            ):
                if (value := _reading(entry.get(field))) is not None:
                    family.add_metric(labels, value)
            self.job_slot.add_metric(labels, 1.0 if index in slots else 0.0)

    def families(self) -> Iterator[GaugeMetricFamily]:
        yield from (self.utilization, self.memory_used, self.memory_total, self.temperature, self.job_slot)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _reading(value: object) -> float | None:
    """A number a worker reported, or None (missing, not a number, not finite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (as_utc(end) - as_utc(start)).total_seconds())


def observe_admitted(queue: str, attempt: JobAttempt) -> None:
    """Count an attempt's wait for admission, once its `admitted_at` is set (the admitter)."""
    since = max(as_utc(t) for t in (attempt.created_at, attempt.not_before) if t is not None)
    if (wait := _seconds_between(since, attempt.admitted_at)) is not None:
        ADMISSION_WAIT.labels(queue).observe(wait)


def observe_started(attempt: JobAttempt) -> None:
    """Count an attempt's dispatch latency as it starts running (transitions.move_attempt)."""
    if (latency := _seconds_between(attempt.admitted_at, attempt.started_at)) is not None:
        DISPATCH_LATENCY.observe(latency)


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


def make_registry(
    engine: Engine, broker: redis.Redis, offline_after: float | None = None
) -> CollectorRegistry:
    """One registry per app: the process-wide counters plus this app's view of the farm. A node is
    offline after `offline_after` seconds of silence (default: the `node_offline_after` setting)."""
    if offline_after is None:
        offline_after = get_settings().node_offline_after
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
        ADMISSION_WAIT,
        DISPATCH_LATENCY,
    ):
        registry.register(collector)
    registry.register(FarmCollector(engine, broker))
    registry.register(AdmissionCollector(engine))
    registry.register(NodeCollector(engine, offline_after))
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
