"""Per-user caps on a queue: admins set them; a user reads their own."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from master import audit
from master.api.deps import AdminDep, CallerDep, SessionDep, StateDep, client_address
from master.api.errors import documented
from master.auth import accounts
from master.fairshare.caps import Caps, read_caps
from master.models import UserLimit
from shared.celery_config import QUEUES
from shared.errors import Forbidden
from shared.roles import USER_NAME_PATTERN

router = APIRouter(prefix="/users", tags=["users"], responses=documented(400, 401, 403, 404, 422))

UserName = Annotated[str, PathParam(pattern=USER_NAME_PATTERN, description="The user's name")]
QueueName = Literal["gpu", "cpu"]


class LimitsIn(BaseModel):
    """Null leaves a cap to the farm's default (TRAINFARM_USER_MAX_DEVICES, ..._MAX_QUEUED); 0: no cap."""

    # Strict: `false` is not a cap of 0.
    model_config = ConfigDict(strict=True, extra="forbid")

    max_devices: int | None = Field(default=None, ge=0, le=100_000)
    max_queued: int | None = Field(default=None, ge=0, le=10_000_000)


class LimitsOut(BaseModel):
    user: str
    queue: str
    max_devices: int
    max_queued: int
    #: "user" where an admin set the cap, "default" where the farm's setting applies.
    limits_from: dict[str, str]


def _limits(session: SessionDep, state: StateDep, user: str) -> list[LimitsOut]:
    settings = state.settings
    book = read_caps(session, Caps(settings.user_max_devices, settings.user_max_queued))
    out = []
    for queue in QUEUES:
        caps = book.of(user, queue)
        out.append(
            LimitsOut(
                user=user,
                queue=queue,
                max_devices=caps.max_devices,
                max_queued=caps.max_queued,
                limits_from=book.source(user, queue),
            )
        )
    return out


@router.get("/{name}/limits", response_model=list[LimitsOut])
def get_limits(name: UserName, caller: CallerDep, session: SessionDep, state: StateDep) -> list[LimitsOut]:
    """A user's caps on each queue, and where each comes from. Admins read anyone's; others their own."""
    if not caller.is_admin and caller.name != name:
        raise Forbidden(f"only admins read another user's limits ('{caller.name}' asked for '{name}')")
    accounts.get_user(session, name)
    return _limits(session, state, name)


@router.put("/{name}/limits/{queue}", response_model=list[LimitsOut])
def set_limits(
    name: UserName,
    queue: QueueName,
    body: LimitsIn,
    caller: AdminDep,
    session: SessionDep,
    state: StateDep,
    request: Request,
) -> list[LimitsOut]:
    """Set a user's caps on one queue (null: the farm's default); admission applies them at once."""
    accounts.get_user(session, name)
    row = session.get(UserLimit, (name, queue)) or UserLimit(user=name, queue=queue)
    row.max_devices, row.max_queued = body.max_devices, body.max_queued
    if row.max_devices is None and row.max_queued is None:
        if session.get(UserLimit, (name, queue)) is not None:
            session.delete(row)
    else:
        session.add(row)
    audit.record(
        session,
        caller.name,
        "user.limits",
        f"user {name}",
        {"queue": queue, **body.model_dump()},
        client_address(request),
    )
    session.commit()
    state.admitter.wake()
    return _limits(session, state, name)
