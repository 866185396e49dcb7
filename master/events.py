"""Applying workers' events to the database, each exactly once, in the order they were sent."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from master.lifecycle import end_attempt
from master.metrics import EVENTS_APPLIED
from master.models import Artifact, Job, JobAttempt, JobMetric
from shared.schemas import AttemptOutcome, Event, EventKind
from shared.status import JobStatus, can_move
from shared.streams import EventBus

log = logging.getLogger(__name__)


def _ts(event: Event) -> datetime:
    return datetime.fromtimestamp(event.ts, UTC)


def apply_event(session: Session, event: Event) -> bool:
    """Apply one event inside the caller's transaction; False when it was already applied."""
    attempt = session.exec(
        select(JobAttempt).where(JobAttempt.job_id == event.job_id, JobAttempt.number == event.attempt)
    ).first()
    job = session.get(Job, event.job_id)
    if attempt is None or job is None:
        log.warning("event for unknown job %s attempt %s dropped", event.job_id, event.attempt)
        return False
    if event.seq <= attempt.last_event_seq:
        return False
    attempt.last_event_seq = event.seq
    current = attempt.number == job.attempts
    handler = _HANDLERS[event.kind]
    handler(session, job, attempt, event, current)
    session.add(attempt)
    session.add(job)
    EVENTS_APPLIED.labels(event.kind.value).inc()
    return True


def _started(session: Session, job: Job, attempt: JobAttempt, event: Event, current: bool) -> None:
    if attempt.status == JobStatus.QUEUED:
        attempt.status = JobStatus.RUNNING
    attempt.node, attempt.started_at = event.node, _ts(event)
    attempt.info = {**attempt.info, **event.data}
    if current and can_move(job.status, JobStatus.RUNNING):
        job.status, job.node = JobStatus.RUNNING, event.node
        job.started_at = job.started_at or _ts(event)


def _metrics(session: Session, job: Job, attempt: JobAttempt, event: Event, current: bool) -> None:
    data: dict[str, Any] = event.data
    values = {k: float(v) for k, v in (data.get("metrics") or {}).items()}
    session.add(
        JobMetric(
            job_id=job.id,  # type: ignore[arg-type]
            attempt=attempt.number,
            kind=str(data.get("kind", "metrics")),
            epoch=data.get("epoch"),
            step=data.get("step"),
            values=values,
            ts=_ts(event),
        )
    )
    if current:
        progress = {k: data[k] for k in ("epoch", "step", "max_epochs") if data.get(k) is not None}
        job.progress = {**job.progress, **progress, "attempt": attempt.number}
        job.metrics = {**job.metrics, **values}


def _artifact(session: Session, job: Job, attempt: JobAttempt, event: Event, current: bool) -> None:
    d = event.data
    row = session.exec(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == d["name"])).first()
    row = row or Artifact(job_id=job.id, name=d["name"], key=d["key"], size=0, attempt=attempt.number)  # type: ignore[arg-type]
    row.key, row.size, row.sha256, row.attempt = d["key"], int(d["size"]), d.get("sha256"), attempt.number
    session.add(row)


def _finished(session: Session, job: Job, attempt: JobAttempt, event: Event, current: bool) -> None:
    d = event.data
    outcome = AttemptOutcome(d["outcome"])
    attempt.status = JobStatus(outcome.value)
    attempt.finished_at = _ts(event)
    attempt.exit_code = d.get("exit_code")
    attempt.error = d.get("error")
    attempt.log_key = d.get("log_key")
    if not current:
        return
    job.log_tail = d.get("log_tail")
    end_attempt(
        session,
        job,
        attempt,
        outcome,
        retryable=bool(d.get("retryable")),
        error=d.get("error"),
        handed_back=bool(d.get("handed_back")),
    )


_HANDLERS = {
    EventKind.STARTED: _started,
    EventKind.METRICS: _metrics,
    EventKind.ARTIFACT: _artifact,
    EventKind.FINISHED: _finished,
}


class EventConsumer:
    """Reads the events stream as the `master` consumer group and applies what it reads.

    Entries are acknowledged only after their transaction commits; a master that dies in between
    gets them again on restart (pending entries are read first) and the sequence check drops the
    ones already applied.
    """

    #: Events read per round; a full round means more are waiting.
    batch = 500

    def __init__(self, bus: EventBus, engine: Engine, consumer: str = "master-1") -> None:
        self._bus = bus
        self._engine = engine
        self._consumer = consumer
        self._pending_done = False

    def poll(self, block_ms: int = 500) -> int:
        count = self.batch
        if not self._pending_done:
            self._bus.ensure_group()
        entries = self._bus.read(
            self._consumer, pending=not self._pending_done, count=count, block_ms=block_ms
        )
        if not self._pending_done and not entries:
            self._pending_done = True
            return self.batch  # not caught up yet: new events come next
        with Session(self._engine) as session:
            for _entry_id, event in entries:
                apply_event(session, event)
                # Flush per event so a later event of the same batch sees this one's rows.
                session.flush()
            session.commit()
        self._bus.ack([entry_id for entry_id, _ in entries])
        return len(entries)
