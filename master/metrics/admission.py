"""What waits for admission per queue, and the devices each user's running jobs hold."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, case, func
from sqlmodel import Session, col, select

from master.fairshare.usage import owner_key
from master.fairshare.waiting import WAITING_QUERY
from master.models import Job, JobAttempt, as_utc, utcnow
from shared.celery_config import QUEUES
from shared.status import JobStatus


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
