"""The jobs waiting for admission, in memory by queue and user, each user's in their start order.

Held in memory because a decision must take milliseconds with ten thousand jobs waiting; the
database stays the truth: the set is loaded from it at start, topped up from it at each decision
(attempts newer than the last one seen, and the ones a submission names), read again whole every
`admission_resync_interval`, and an admission takes effect only through a conditional UPDATE.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlmodel import Session, col

from master.fairshare.usage import owner_key
from master.models import Job, JobAttempt, unix_seconds
from shared.status import JobStatus

#: A user's jobs start in this order: higher priority first, then submission order.
Rank = tuple[int, int]


@dataclass(frozen=True)
class WaitingJob:
    job_id: int
    attempt_id: int
    owner: str
    queue: str
    priority: int
    devices: int
    #: Retry backoff: not before this time (Unix seconds).
    not_before: float | None = None

    @property
    def rank(self) -> Rank:
        return (-self.priority, self.job_id)


class WaitingSet:
    def __init__(self) -> None:
        self._jobs: dict[int, WaitingJob] = {}
        #: queue -> user -> ranks of the user's ready jobs, sorted.
        self._ranks: dict[str, dict[str, list[Rank]]] = {}
        #: Jobs in retry backoff, by job id.
        self._delayed: dict[int, WaitingJob] = {}
        #: Highest attempt id loaded; a top-up reads the attempts after it.
        self.watermark = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._jobs

    def get(self, job_id: int) -> WaitingJob | None:
        return self._jobs.get(job_id)

    def put(self, job: WaitingJob, now: float) -> None:
        known = self._jobs.get(job.job_id)
        if known == job:
            return
        if known is not None:
            self.remove(job.job_id)
        self._jobs[job.job_id] = job
        self.watermark = max(self.watermark, job.attempt_id)
        if job.not_before is not None and job.not_before > now:
            self._delayed[job.job_id] = job
        else:
            bisect.insort(self._ranks.setdefault(job.queue, {}).setdefault(job.owner, []), job.rank)

    def remove(self, job_id: int) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        if self._delayed.pop(job_id, None) is not None:
            return
        users = self._ranks[job.queue]
        ranks = users[job.owner]
        i = bisect.bisect_left(ranks, job.rank)
        if i < len(ranks) and ranks[i] == job.rank:
            del ranks[i]
        if not ranks:
            del users[job.owner]

    def release_due(self, now: float) -> None:
        """Jobs whose backoff has passed join their user's order."""
        due = [job for job in self._delayed.values() if job.not_before is None or job.not_before <= now]
        for job in due:
            del self._delayed[job.job_id]
            bisect.insort(self._ranks.setdefault(job.queue, {}).setdefault(job.owner, []), job.rank)

    def next_due(self) -> float | None:
        return min((j.not_before for j in self._delayed.values() if j.not_before is not None), default=None)

    def delayed_jobs(self) -> dict[int, WaitingJob]:
        """The jobs in retry backoff (a copy)."""
        return dict(self._delayed)

    def queues(self) -> list[str]:
        return [q for q, users in self._ranks.items() if users]

    def users(self, queue: str) -> dict[str, list[Rank]]:
        """The ready jobs of each user on `queue`, in their order (the set's own lists: read only)."""
        return self._ranks.get(queue, {})

    def job(self, rank: Rank) -> WaitingJob:
        return self._jobs[rank[1]]

    def replace(self, jobs: Iterable[WaitingJob], now: float) -> None:
        """Everything at once, from a full read of the database."""
        self._jobs.clear()
        self._ranks.clear()
        self._delayed.clear()
        for job in jobs:
            self.put(job, now)


def _waiting_query() -> Select[tuple[int, int, float | None, str | None, str, int, int]]:
    return (
        select(  # type: ignore[call-overload]
            JobAttempt.id,
            JobAttempt.job_id,
            JobAttempt.not_before,
            Job.owner,
            Job.queue,
            Job.priority,
            Job.devices,
        )
        .join(Job, Job.id == JobAttempt.job_id)  # type: ignore[arg-type]
        .where(
            JobAttempt.status == JobStatus.QUEUED,
            col(JobAttempt.admitted_at).is_(None),
            Job.status == JobStatus.QUEUED,
            JobAttempt.number == Job.attempts,
        )
    )


#: Built once: making the statement anew costs as much as running a top-up.
WAITING_QUERY = _waiting_query()


def load_waiting(
    session: Session, *, after: int | None = None, attempt_ids: Iterable[int] = ()
) -> list[WaitingJob]:
    """Waiting jobs from the database: all of them, or those whose attempt id is above `after` or
    among `attempt_ids` (a top-up)."""
    query = WAITING_QUERY
    if after is not None:
        ids = list(attempt_ids)
        newer = col(JobAttempt.id) > after
        query = query.where(newer | col(JobAttempt.id).in_(ids) if ids else newer)
    # On the connection, not through the ORM: plain rows, a third of the cost.
    rows: list[Any] = list(session.connection().execute(query))
    return [
        WaitingJob(
            job_id=job_id,
            attempt_id=attempt_id,
            owner=owner_key(owner),
            queue=queue,
            priority=priority,
            devices=devices,
            not_before=unix_seconds(not_before),
        )
        for attempt_id, job_id, not_before, owner, queue, priority, devices in rows
    ]
