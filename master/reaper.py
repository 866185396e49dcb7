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

from master.lifecycle import end_attempt
from master.models import Job, JobAttempt, utcnow
from shared.leases import Leases
from shared.schemas import AttemptOutcome
from shared.status import JobStatus
from shared.streams import LogBatch, LogStream

log = logging.getLogger(__name__)


class LeaseReaper:
    def __init__(self, engine: Engine, leases: Leases, logs: LogStream, grace: float) -> None:
        self._engine = engine
        self._leases = leases
        self._logs = logs
        self._grace = grace
        #: When each running attempt was first seen without a lease (monotonic seconds).
        self._missing: dict[tuple[int, int], float] = {}

    def poll(self) -> int:
        with Session(self._engine) as session:
            rows = session.exec(
                select(JobAttempt, Job)
                .join(Job, Job.id == JobAttempt.job_id)  # type: ignore[arg-type]
                .where(JobAttempt.status == JobStatus.RUNNING)
            ).all()
            keys = [(a.job_id, a.number) for a, _ in rows]
            present = self._leases.present(keys) if keys else []
            now = time.monotonic()
            self._missing = {k: t for k, t in self._missing.items() if k in set(keys)}
            lost = 0
            for (attempt, job), alive in zip(rows, present, strict=True):
                key = (attempt.job_id, attempt.number)
                if alive:
                    self._missing.pop(key, None)
                    continue
                if now - self._missing.setdefault(key, now) < self._grace:
                    continue
                # Fence first: if the worker renewed in the meantime, the attempt is not lost.
                if not self._leases.mark_lost(*key):
                    continue
                self._missing.pop(key, None)
                self._declare_lost(session, job, attempt)
                lost += 1
            session.commit()
        return lost

    def _declare_lost(self, session: Session, job: Job, attempt: JobAttempt) -> None:
        error = f"worker lost: {attempt.node or 'its node'} stopped renewing the lease"
        log.warning("job %s attempt %s: %s", job.id, attempt.number, error)
        attempt.status, attempt.finished_at, attempt.error = JobStatus.FAILED, utcnow(), error
        session.add(attempt)
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
