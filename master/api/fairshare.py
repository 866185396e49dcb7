"""Fair share as admission last decided it: each queue's capacity and use, each user's share."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from master.api.deps import CallerDep, StateDep
from master.api.errors import documented
from master.fairshare.view import QueueShare, UserShare

router = APIRouter(prefix="/fairshare", tags=["fairshare"], responses=documented(401, 403))


class FairShareOut(BaseModel):
    #: When admission last decided; null before its first decision.
    decided_at: str | None
    half_life_seconds: float
    preemption: bool
    queues: list[QueueShare]
    users: list[UserShare]


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
        queues=queues,
        users=users,
    )
