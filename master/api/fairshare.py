"""Fair share as admission last decided it: each queue's capacity and use, each user's share."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from master.api.deps import CallerDep, StateDep
from master.api.errors import documented

router = APIRouter(prefix="/fairshare", tags=["fairshare"], responses=documented(401, 403))


class QueueShareOut(BaseModel):
    queue: str
    #: Attempts the queue's online workers run at once, and the GPUs they hand out (0: none).
    slots: int
    gpus: int
    used_slots: int
    used_devices: int
    waiting: int
    workers: int


class UserShareOut(BaseModel):
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
    #: Jobs ahead of the user's next waiting one; null when none of theirs waits.
    position: int | None
    #: "user" where an admin set the cap, "default" where the farm's setting applies.
    limits_from: dict[str, str]


class FairShareOut(BaseModel):
    #: When admission last decided; null before its first decision.
    decided_at: str | None
    half_life_seconds: float
    preemption: bool
    queues: list[QueueShareOut]
    users: list[UserShareOut]


@router.get("", response_model=FairShareOut)
def fairshare(state: StateDep, caller: CallerDep) -> FairShareOut:
    """Each user's running devices, caps, decayed usage and queue position, per queue."""
    settings = state.settings
    view = state.admitter.view
    if view is None:
        return FairShareOut(
            decided_at=None,
            half_life_seconds=settings.fairshare_half_life,
            preemption=settings.preemption,
            queues=[],
            users=[],
        )
    queues, users = view.shares()
    return FairShareOut(
        decided_at=view.at.isoformat(),
        half_life_seconds=view.half_life,
        preemption=settings.preemption,
        queues=[QueueShareOut(**vars(q)) for q in queues],
        users=[UserShareOut(**vars(u)) for u in users],
    )
