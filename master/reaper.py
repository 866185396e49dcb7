"""Finding attempts whose worker died: their lease expired, so they are marked lost and retried.

Bound: a worker killed at time T stops renewing; its lease expires by T + lease_ttl; the reaper sees
it missing within one check and confirms after `lease_grace`. With the defaults (15 s TTL, 7.5 s
grace, checked every 2 s) a dead worker's job is requeued within about 25 s.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine
from sqlmodel import Session, select

from master.fairshare.usage import UsageMeter
from master.lifecycle import end_attempt
from master.models import Job, JobAttempt
from master.transitions import move_attempt
from shared.leases import Leases
from shared.schemas import AttemptOutcome
from shared.status import JobStatus
from shared.streams import LogBatch, LogStream

log = logging.getLogger(__name__)


Key = tuple[int, int]


def overdue(
    present: dict[Key, bool], missing: dict[Key, float], now: float, grace: float
) -> tuple[list[Key], dict[Key, float]]:
    """The reaper's decision, without Redis or a database: which running attempts have been
    without a lease for `grace` seconds by `now`, and when each still-running attempt without one
    was first seen so (attempts no longer running are forgotten; one whose lease is back is too)."""
    still = {key: missing.get(key, now) for key, alive in present.items() if not alive}
    return [key for key, since in still.items() if now - since >= grace], still


class LeaseReaper:
    def __init__(
        self, engine: Engine, leases: Leases, logs: LogStream, grace: float, meter: UsageMeter | None = None
    ) -> None:
        self._engine = engine
        #: Charges a lost attempt's devices to its owner's usage, as an ended one's.
        self._meter = meter
        self._leases = leases
        self._logs = logs
        self._grace = grace
        #: When each running attempt was first seen without a lease (monotonic seconds).
        self._missing: dict[Key, float] = {}

    def poll(self) -> int:
        with Session(self._engine) as session:
            rows = session.exec(
                select(JobAttempt, Job)
                .join(Job, Job.id == JobAttempt.job_id)  # type: ignore[arg-type]
                .where(JobAttempt.status == JobStatus.RUNNING)
            ).all()
            keys = [(a.job_id, a.number) for a, _ in rows]
            present = dict(zip(keys, self._leases.present(keys) if keys else [], strict=True))
            due, self._missing = overdue(present, self._missing, time.monotonic(), self._grace)
            by_key = {(a.job_id, a.number): (a, j) for a, j in rows}
            lost = 0
            for key in due:
                # Fence first: if the worker renewed in the meantime, the attempt is not lost.
                if not self._leases.mark_lost(*key):
                    continue
                self._missing.pop(key, None)
                attempt, job = by_key[key]
                self._declare_lost(session, job, attempt)
                lost += 1
            session.commit()
        return lost

    def _declare_lost(self, session: Session, job: Job, attempt: JobAttempt) -> None:
        error = f"worker lost: {attempt.node or 'its node'} stopped renewing the lease"
        log.warning("job %s attempt %s: %s", job.id, attempt.number, error)
        if not move_attempt(attempt, JobStatus.FAILED):
            return
        attempt.error = error
        session.add(attempt)
        if self._meter is not None and attempt.started_at is not None and attempt.finished_at is not None:
            self._meter.charge(
                session, job.owner, job.queue, job.devices, attempt.started_at, attempt.finished_at
            )
        if job.preempting == attempt.number:
            job.preempting = None
            session.add(job)
        assert job.id is not None
        try:
            line = self._logs.next_line(job.id, attempt.number)
            self._logs.append(
                job.id, [LogBatch(attempt.number, line, [f"[trainfarm] attempt {attempt.number}: {error}"])]
            )
        except Exception as exc:  # the note is a courtesy; the state change below is what matters
            log.warning("could not note the lost attempt in the job log: %s", exc)
        if attempt.number == job.attempts:
            end_attempt(session, job, attempt, AttemptOutcome.FAILED, retryable=True, error=error)
            session.add(job)
