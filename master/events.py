"""Applying workers' events to the database, each exactly once, in the order they were sent.

The stream is untrusted input (anything that reaches Redis can write to it, and a worker of another
version may be wrong): each entry is parsed again into the models of shared/events.py and applied
in one transaction per batch. An entry that cannot be parsed or applied goes to the dead-letter stream
with the reason, is acknowledged, and shows on its job as a warning; the consumer goes on with the
rest of the batch and never reads it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import redis
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session, select

from master.fairshare.usage import UsageMeter
from master.job_usage import DEFAULT_IDLE_RULE, IdleRule, idle_stop_reason, record_usage
from master.job_warnings import add_warning
from master.lifecycle import DEFAULT_POLICY, RetryPolicy, end_attempt
from master.metrics import EVENTS_APPLIED, EVENTS_DEAD_LETTERED, EVENTS_REFUSED
from master.models import Artifact, Job, JobAttempt, JobMetric
from master.transitions import move_attempt, move_job
from shared.events import (
    ArtifactEvent,
    Event,
    FinishedEvent,
    MetricsEvent,
    StartedEvent,
    UsageEvent,
    describe,
    parse_event,
)
from shared.schemas import AttemptOutcome, EventKind
from shared.status import JobStatus
from shared.streams import EventBus

log = logging.getLogger(__name__)


def _ts(event: Event) -> datetime:
    return datetime.fromtimestamp(event.ts, UTC)


def apply_event(
    session: Session,
    event: Event,
    policy: RetryPolicy = DEFAULT_POLICY,
    meter: UsageMeter | None = None,
    *,
    idle: IdleRule = DEFAULT_IDLE_RULE,
    broker: redis.Redis | None = None,
) -> bool:
    """Apply one event inside the caller's transaction; False when it was already applied. An
    attempt that ends is charged to its owner's usage by `meter` (fair share); usage samples are
    judged by the `idle` rule, which cancels through `broker`."""
    attempt = session.exec(
        select(JobAttempt).where(JobAttempt.job_id == event.job_id, JobAttempt.number == event.attempt)
    ).first()
    job = session.get(Job, event.job_id)
    if attempt is None or job is None:
        log.warning("event for unknown job %s attempt %s dropped", event.job_id, event.attempt)
        return False
    if event.seq <= attempt.last_event_seq:
        return False
    if not _from_holder(attempt, event):
        return False
    attempt.last_event_seq = event.seq
    current = attempt.number == job.attempts
    match event:
        case StartedEvent():
            _started(job, attempt, event, current)
        case MetricsEvent():
            _metrics(session, job, attempt, event, current)
        case ArtifactEvent():
            _artifact(session, job, attempt, event)
        case FinishedEvent():
            _finished(session, job, attempt, event, current, policy, meter)
        case UsageEvent():
            record_usage(session, job, attempt, event.data, _ts(event), current, idle, broker)
    session.add(attempt)
    session.add(job)
    return True


def _from_holder(attempt: JobAttempt, event: Event) -> bool:
    """The event comes from the worker that holds the attempt: the one whose `started` about it
    came first (it took the attempt's lease before reporting it). Another worker's, or one forged
    by whoever reached Redis, is ignored and counted."""
    if attempt.worker is None:
        # Only a `started` binds (the worker sends it right after taking the lease); until one
        # came, other kinds are taken as they are (an attempt cancelled before it started ends
        # with a `finished` alone).
        if isinstance(event, StartedEvent):
            attempt.worker = event.worker or None
        return True
    if event.worker == attempt.worker:
        return True
    EVENTS_REFUSED.inc()
    log.warning(
        "event %s of job %s attempt %s from worker %r ignored: the attempt is %r's",
        event.kind.value,
        event.job_id,
        event.attempt,
        event.worker,
        attempt.worker,
    )
    return False


def _started(job: Job, attempt: JobAttempt, event: StartedEvent, current: bool) -> None:
    # Sent twice (at once, then with datasets and code in place): the second finds it running.
    if attempt.status == JobStatus.QUEUED:
        move_attempt(attempt, JobStatus.RUNNING, at=_ts(event))
    attempt.node = event.node
    attempt.info = {**attempt.info, **event.data.model_dump(mode="json", exclude_none=True)}
    if current and job.status != JobStatus.RUNNING and move_job(job, JobStatus.RUNNING, at=_ts(event)):
        job.node = event.node


def _metrics(session: Session, job: Job, attempt: JobAttempt, event: MetricsEvent, current: bool) -> None:
    data = event.data
    session.add(
        JobMetric(
            job_id=job.id,  # type: ignore[arg-type]
            attempt=attempt.number,
            kind=data.kind,
            epoch=data.epoch,
            step=data.step,
            values=dict(data.metrics),
            ts=_ts(event),
        )
    )
    if current:
        progress = {
            k: v
            for k, v in (("epoch", data.epoch), ("step", data.step), ("max_epochs", data.max_epochs))
            if v is not None
        }
        job.progress = {**job.progress, **progress, "attempt": attempt.number}
        job.metrics = {**job.metrics, **data.metrics}


def _own_key(job: Job, key: str, prefixes: tuple[str, ...]) -> None:
    """Refuse `key` unless it lies under one of this job's prefixes. The master serves artifacts and logs with
    its own S3 identity, so an event naming any other key (another job's artifact, a code bundle, a
    dataset) would hand that object to whoever can download this job's files."""
    own = tuple(f"{prefix}/{job.id}/" for prefix in prefixes)
    if not key.startswith(own) or "/../" in key or key.endswith("/.."):
        raise ValueError(f"key {key[:200]!r} is not under {' or '.join(own)}")


def _artifact(session: Session, job: Job, attempt: JobAttempt, event: ArtifactEvent) -> None:
    d = event.data
    _own_key(job, d.key, ("artifacts", "checkpoints"))
    row = session.exec(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == d.name)).first()
    row = row or Artifact(job_id=job.id, name=d.name, key=d.key, size=0, attempt=attempt.number)  # type: ignore[arg-type]
    row.key, row.size, row.sha256, row.attempt = d.key, d.size, d.sha256, attempt.number
    session.add(row)


def _finished(
    session: Session,
    job: Job,
    attempt: JobAttempt,
    event: FinishedEvent,
    current: bool,
    policy: RetryPolicy,
    meter: UsageMeter | None,
) -> None:
    d = event.data
    if d.log_key is not None:
        _own_key(job, d.log_key, ("logs",))
    attempt.log_key = d.log_key or attempt.log_key
    ended = JobStatus(d.outcome.value)
    if ended == JobStatus.SUCCEEDED and attempt.status == JobStatus.QUEUED:
        # It ran, so its `started` was lost (dead-lettered): through running, as it went.
        move_attempt(attempt, JobStatus.RUNNING, at=_ts(event))
        if current and job.status == JobStatus.QUEUED:
            move_job(job, JobStatus.RUNNING, at=_ts(event))
    if not move_attempt(attempt, ended, at=_ts(event)):
        # Ended already by another path (declared lost, cancelled while queued): that path moved
        # the job; a second end would start a second retry.
        return
    attempt.exit_code = d.exit_code
    attempt.error = d.error
    if meter is not None and attempt.started_at is not None and attempt.finished_at is not None:
        meter.charge(session, job.owner, job.queue, job.devices, attempt.started_at, attempt.finished_at)
    # Preempted by the master (it knows which attempts it asked), honoured by the worker's hand-back.
    preempted = job.preempting == attempt.number and d.handed_back
    if job.preempting == attempt.number:
        job.preempting = None
    if not current:
        return
    job.log_tail = d.log_tail
    end_attempt(
        session,
        job,
        attempt,
        AttemptOutcome(d.outcome),
        retryable=d.retryable,
        error=d.error,
        handed_back=d.handed_back,
        preempted=preempted,
        policy=policy,
    )
    stopped = idle_stop_reason(job)
    if stopped is not None and job.status == JobStatus.CANCELLED:
        job.error = stopped  # the farm cancelled it, not a user, whatever the worker's words


#: Errors that say the database is away, not that the event is bad: the batch stays pending and is
#: read again once the database is back, as before.
_UNAVAILABLE = (OperationalError, InterfaceError)


def _unavailable(exc: Exception) -> bool:
    return isinstance(exc, _UNAVAILABLE) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _job_of(raw: bytes) -> int | None:
    """The job an unparseable entry claims to be about, to warn on it; None when it names none."""
    try:
        value = json.loads(raw).get("job_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else None


def apply_entries(
    engine: Engine,
    entries: Sequence[bytes],
    policy: RetryPolicy = DEFAULT_POLICY,
    meter: UsageMeter | None = None,
    applied_kinds: list[str] | None = None,
    *,
    idle: IdleRule = DEFAULT_IDLE_RULE,
    broker: redis.Redis | None = None,
) -> list[str | None]:
    """Parse and apply a batch of stream entries in one transaction: for each, the reason it is
    dead (then noted on its job), or None when it was applied or was a replay. The kinds of the
    events applied are added to `applied_kinds` once the transaction has committed.

    No savepoints: SQLite's driver commits a savepoint opened outside a transaction as soon as it
    is released, and a transaction that begins by reading cannot take SQLite's write lock once
    another connection has written since ("database is locked" at once, with no waiting). So an
    entry that passes validation but fails to apply rolls the batch back, and the batch is applied
    again without it; that costs a second pass only in the rare round that holds such an entry.
    """
    reasons: list[str | None] = [None] * len(entries)
    events: list[Event | None] = []
    for i, raw in enumerate(entries):
        try:
            events.append(parse_event(raw))
        except Exception as exc:  # ValidationError, or anything a hostile entry provokes
            events.append(None)
            reasons[i] = f"invalid event: {describe(exc) if isinstance(exc, ValidationError) else exc!r}"[
                :2000
            ]
            EVENTS_DEAD_LETTERED.labels("invalid").inc()
    while True:
        applied: list[str] = []
        with Session(engine) as session:
            failed = _apply_all(session, events, reasons, policy, meter, applied, idle, broker)
            if failed is None:
                for i, reason in enumerate(reasons):
                    if reason is not None:
                        event = events[i]
                        _warn(session, event.job_id if event else _job_of(entries[i]), reason[:500])
                session.commit()
                for kind in applied:
                    EVENTS_APPLIED.labels(kind).inc()
                if applied_kinds is not None:
                    applied_kinds.extend(applied)
                return reasons
            session.rollback()
        events[failed] = None
        EVENTS_DEAD_LETTERED.labels("apply").inc()


def _apply_all(
    session: Session,
    events: Sequence[Event | None],
    reasons: list[str | None],
    policy: RetryPolicy,
    meter: UsageMeter | None,
    applied: list[str],
    idle: IdleRule,
    broker: redis.Redis | None,
) -> int | None:
    """Apply the events not yet known dead, noting the kinds applied (replays are not); the index of
    the first that fails, its reason noted."""
    for i, event in enumerate(events):
        if event is None:
            continue
        try:
            if apply_event(session, event, policy, meter, idle=idle, broker=broker):
                applied.append(event.kind.value)
            # Flushed here so a later event of the batch sees this one's rows, and so an error
            # shows as this event's.
            session.flush()
        except Exception as exc:
            if _unavailable(exc):
                raise
            log.exception(
                "event %s of job %s attempt %s could not be applied", event.seq, event.job_id, event.attempt
            )
            reasons[i] = (
                f"{event.kind.value} event {event.seq} of attempt {event.attempt} not applied: "
                f"{type(exc).__name__}: {exc}"
            )[:2000]
            return i
    return None


def _warn(session: Session, job_id: int | None, reason: str) -> None:
    """Note the dead event on its job (the dead-letter stream keeps it whatever happens here)."""
    job = session.get(Job, job_id) if job_id is not None else None
    if job is not None:
        add_warning(job, reason)
        session.add(job)


class EventConsumer:
    """Reads the events stream as the `master` consumer group and applies what it reads.

    Entries are acknowledged only after their transaction commits; a master that dies in between
    gets them again on restart (pending entries are read first) and the sequence check drops the
    ones already applied. An entry that is bad in itself is dead-lettered and acknowledged with
    the others, so it is never read again.
    """

    #: Events read per round; a full round means more are waiting.
    batch = 500

    def __init__(
        self,
        bus: EventBus,
        engine: Engine,
        consumer: str = "master-1",
        policy: RetryPolicy = DEFAULT_POLICY,
        meter: UsageMeter | None = None,
        on_ended: Callable[[], None] | None = None,
        idle: IdleRule | None = None,
        broker: redis.Redis | None = None,
    ) -> None:
        self._bus = bus
        self._engine = engine
        self._consumer = consumer
        self._policy = policy
        self._meter = meter
        #: Told once a round has applied an attempt's end: devices came free (admission decides).
        self._on_ended = on_ended
        #: The idle-GPU rule (the master's settings), and the Redis through which it cancels: without
        #: one it only flags (see master/job_usage.py).
        self._idle = idle or DEFAULT_IDLE_RULE
        self._broker = broker
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
        try:
            kinds: list[str] = []
            reasons = apply_entries(
                self._engine,
                [raw for _, raw in entries],
                self._policy,
                self._meter,
                kinds,
                idle=self._idle,
                broker=self._broker,
            )
            if self._on_ended is not None and EventKind.FINISHED.value in kinds:
                self._on_ended()
            dead = [(eid, raw, why) for (eid, raw), why in zip(entries, reasons, strict=True) if why]
            # Dead-lettered before the acknowledgement: a crash in between only dead-letters it
            # twice. A dead letter Redis refuses (full) is still in the log and on its job.
            try:
                self._bus.dead_letter(dead)
            except redis.RedisError:
                log.exception("could not keep %d dead events in the dead-letter stream", len(dead))
            self._bus.ack([entry_id for entry_id, _ in entries])
        except Exception:
            # Not applied, or applied but not acknowledged: the round's entries stay pending, and
            # ">" never hands them out again, so the next round reads the pending ones first
            # (replays of applied ones are dropped by their sequence numbers).
            self._pending_done = False
            raise
        return len(entries)
