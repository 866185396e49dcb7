"""What a submission must pass before it is stored: the priority a member may use, and the cap on
how many jobs one user may have queued."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func
from sqlmodel import Session, select

from master.auth.callers import Caller
from master.fairshare.caps import Caps, read_caps
from master.fairshare.usage import owner_key
from master.models import Job
from shared.errors import Forbidden, TrainfarmError
from shared.schemas import JobSpec
from shared.settings import Settings
from shared.status import JobStatus


class QueuedCapReached(TrainfarmError):
    """429: the user has as many jobs queued as they may; they can submit again once some start."""

    http_status = 429


def check_priority(caller: Caller, spec: JobSpec, member_max: int, field: str = "priority") -> None:
    """Priorities above `member_max` are for admins, so "urgent" cannot become everyone's default."""
    if spec.priority > member_max and not caller.is_admin:
        raise Forbidden(
            f"priority {spec.priority} is for admins; members may use 0 to {member_max}", field=field
        )


def check_queued_cap(session: Session, settings: Settings, owner: str | None, specs: list[JobSpec]) -> None:
    """Refuse the whole submission when it would take its owner past their queued cap on a queue."""
    adding = Counter(spec.queue for spec in specs)
    book = read_caps(session, Caps(settings.user_max_devices, settings.user_max_queued))
    for queue, count in sorted(adding.items()):
        cap = book.of(owner_key(owner), queue).max_queued
        if cap == 0:
            continue
        queued = session.exec(
            select(func.count())
            .select_from(Job)
            .where(Job.owner == owner, Job.status == JobStatus.QUEUED, Job.queue == queue)
        ).one()
        if queued + count > cap:
            who = owner or "jobs without an owner"
            raise QueuedCapReached(
                f"{who} has {queued} jobs queued on {queue} and may have at most {cap} "
                f"(max_queued); this submission adds {count}. Submit again once some have started",
                field="jobs" if len(specs) > 1 else "queue",
            )
