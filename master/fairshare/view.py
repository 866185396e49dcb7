"""What the last admission decision saw, frozen for the routes: a queued job's reason, and the
fair-share table (`GET /api/fairshare`). The admitter makes a new one at every decision and swaps
it in whole, so a route never reads a half-made decision and never waits for one."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select, tuple_
from sqlmodel import Session

from master.fairshare import reasons
from master.fairshare.caps import CapBook
from master.fairshare.decide import QueueDecision, ahead_of
from master.fairshare.usage import owner_key
from master.fairshare.waiting import Rank, WaitingJob
from master.models import Job, JobAttempt, as_utc
from shared.status import JobStatus


class UserShare(BaseModel):
    """One user's share of one queue (`GET /api/fairshare`)."""

    #: "" for jobs without an owner (from before there were users).
    user: str
    queue: str
    running_devices: int
    #: 0: no cap.
    max_devices: int
    queued: int
    max_queued: int
    #: Device-hours, decayed with the farm's half-life.
    usage: float
    #: Jobs ahead of this user's next one in the queue's order; None when none of theirs is ready.
    position: int | None
    #: "user" where an admin set the cap, "default" where the farm's setting applies.
    limits_from: dict[str, str]


class QueueShare(BaseModel):
    """A queue's capacity and use."""

    queue: str
    #: Attempts the queue's online workers run at once, and the GPUs they hand out (0: none).
    slots: int
    gpus: int
    used_slots: int
    used_devices: int
    waiting: int
    workers: int


@dataclass(frozen=True)
class AdmissionView:
    at: datetime
    decisions: dict[str, QueueDecision]
    #: queue -> user -> ranks of their ready jobs (copies).
    ranks: dict[str, dict[str, list[Rank]]]
    delayed: dict[int, WaitingJob]
    usage: dict[tuple[str, str], float]
    caps: CapBook
    half_life: float

    def reason(self, job: Job) -> str:
        """Why `job` (queued, not admitted) has not started."""
        assert job.id is not None
        delayed = self.delayed.get(job.id)
        if delayed is not None and delayed.not_before is not None:
            return reasons.backoff(delayed.not_before)
        decision = self.decisions.get(job.queue)
        owner = owner_key(job.owner)
        rank = (-job.priority, job.id)
        users = self.ranks.get(job.queue, {})
        if decision is None or not has_rank(users.get(owner, []), rank):
            return reasons.NOT_SEEN
        if owner in decision.capped:
            held, cap = decision.capped[owner]
            return reasons.over_cap(owner, held, cap, decision)
        stop = decision.stop
        if stop is None:
            return reasons.NOT_SEEN  # it came after the decision, which had room for more
        first = reasons.stopped(stop, decision)
        if stop.job.job_id == job.id:
            return first + reasons.preempting(len(decision.preempt) + decision.leaving)
        waiting = WaitingJob(job.id, 0, owner, job.queue, job.priority, job.devices)
        ahead = ahead_of(waiting, users, self.usage, decision.held, set(decision.capped))
        return reasons.behind(first, ahead)

    def shares(self) -> tuple[list[QueueShare], list[UserShare]]:
        queues = []
        users = []
        for queue, decision in sorted(self.decisions.items()):
            ranks = self.ranks.get(queue, {})
            delayed = [j for j in self.delayed.values() if j.queue == queue]
            queues.append(
                QueueShare(
                    queue=queue,
                    slots=decision.capacity.slots,
                    gpus=decision.capacity.gpus,
                    used_slots=decision.used_slots,
                    used_devices=decision.used_devices,
                    waiting=sum(len(r) for r in ranks.values()) + len(delayed),
                    workers=len(decision.capacity.workers),
                )
            )
            names = set(ranks) | set(decision.held) | {j.owner for j in delayed}
            names |= {u for (u, q) in self.usage if q == queue}
            for user in sorted(names):
                caps = self.caps.of(user, queue)
                mine = ranks.get(user, [])
                position = None
                if mine:
                    first = WaitingJob(mine[0][1], 0, user, queue, -mine[0][0], 1)
                    position = ahead_of(first, ranks, self.usage, decision.held, set(decision.capped))
                users.append(
                    UserShare(
                        user=user,
                        queue=queue,
                        running_devices=decision.held.get(user, 0),
                        max_devices=caps.max_devices,
                        queued=len(mine) + sum(1 for j in delayed if j.owner == user),
                        max_queued=caps.max_queued,
                        usage=self.usage.get((user, queue), 0.0) / 3600.0,
                        position=position,
                        limits_from=self.caps.source(user, queue),
                    )
                )
        return queues, users


def has_rank(ranks: list[Rank], rank: Rank) -> bool:
    """Whether the sorted `ranks` hold `rank`."""
    i = bisect.bisect_left(ranks, rank)
    return i < len(ranks) and ranks[i] == rank


def wait_reasons(session: Session, view: AdmissionView | None, jobs: Sequence[Job]) -> dict[int, str]:
    """The reason of each queued job among `jobs`, with one query for their attempts' admission."""
    queued = [j for j in jobs if j.status == JobStatus.QUEUED and j.id is not None]
    if not queued:
        return {}
    pairs = [(j.id, j.attempts) for j in queued]
    admitted: dict[int, datetime | None] = dict(
        session.execute(
            select(JobAttempt.job_id, JobAttempt.admitted_at).where(  # type: ignore[call-overload]
                tuple_(JobAttempt.job_id, JobAttempt.number).in_(pairs)
            )
        ).all()
    )
    out = {}
    for job in queued:
        assert job.id is not None
        at = admitted.get(job.id)
        if at is not None:
            out[job.id] = reasons.starting(job.queue, as_utc(at))
        elif view is None:
            out[job.id] = reasons.NOT_SEEN
        else:
            out[job.id] = view.reason(job)
    return out
