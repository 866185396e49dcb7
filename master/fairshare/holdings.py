"""The attempts admission let start that have not ended: what each user holds on each queue.

Read from the database at every decision (they are as many as the farm has job slots, not as many
as wait): an attempt counts from the moment it is admitted, before any worker has taken it, so a
decision never hands out a device that a message on its way already claims.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from master.fairshare.usage import Running, owner_key
from master.models import Job, JobAttempt, as_utc, unix_seconds
from shared.status import JobStatus


@dataclass(frozen=True)
class Holding:
    job_id: int
    attempt: int
    owner: str
    queue: str
    priority: int
    devices: int
    #: When it started on a worker (Unix seconds); None while its message is on its way.
    started: float | None
    #: The worker running it (`node#instance`), once it reported.
    worker: str | None
    preemptible: bool
    last_preempted: float | None
    #: The master already asked it to stop for a job of higher priority.
    preempting: bool

    def running(self) -> Running | None:
        if self.started is None:
            return None
        return Running(self.owner, self.queue, self.devices, self.started)


#: Built once: making the statement anew cost as much as running it.
HOLDINGS_QUERY = (
    select(  # type: ignore[call-overload, misc]
        JobAttempt.job_id,
        JobAttempt.number,
        JobAttempt.started_at,
        JobAttempt.worker,
        JobAttempt.status,
        Job.owner,
        Job.queue,
        Job.priority,
        Job.devices,
        Job.preemptible,
        Job.last_preempted_at,
        Job.preempting,
    )
    .join(Job, Job.id == JobAttempt.job_id)  # type: ignore[arg-type]
    .where(
        col(JobAttempt.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        col(JobAttempt.admitted_at).is_not(None),
    )
)


def load_holdings(session: Session) -> list[Holding]:
    query = HOLDINGS_QUERY
    out = []
    # On the connection, not through the ORM: plain rows, a third of the cost at a few hundred.
    for row in session.connection().execute(query):
        (
            job_id,
            number,
            started,
            worker,
            status,
            owner,
            queue,
            priority,
            devices,
            preemptible,
            last,
            preempting,
        ) = row
        out.append(
            Holding(
                job_id=job_id,
                attempt=number,
                owner=owner_key(owner),
                queue=queue,
                priority=priority,
                devices=devices,
                started=as_utc(started).timestamp()
                if started is not None and status == JobStatus.RUNNING
                else None,
                worker=worker,
                preemptible=preemptible,
                last_preempted=unix_seconds(last),
                preempting=preempting == number,
            )
        )
    return out
