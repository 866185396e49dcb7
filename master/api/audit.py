"""The audit trail, for admins: newest first, one page at a time."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import col, select

from master.api.deps import MAX_INT64, AdminDep, SessionDep
from master.api.errors import documented
from master.models import AuditEvent, AuditEventPublic, AuditPage
from shared.roles import USER_NAME_PATTERN

router = APIRouter(prefix="/audit", tags=["audit"], responses=documented(401, 403, 422))

ACTION_FILTER = r"^[a-z_]+(\.[a-z_]+)?$"


@router.get("", response_model=AuditPage)
def list_audit(
    caller: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_INT64, description="Entries older than this id (next page)")
    ] = None,
    actor: Annotated[
        str | None, Query(pattern=USER_NAME_PATTERN, description="Only this user's actions")
    ] = None,
    action: Annotated[
        str | None, Query(pattern=ACTION_FILTER, description="`job.cancel`, or a prefix such as `job`")
    ] = None,
) -> AuditPage:
    """Who submitted, cancelled, uploaded, created or revoked what, and when."""
    query = select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit + 1)
    if before is not None:
        query = query.where(col(AuditEvent.id) < before)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if action is not None:
        if "." in action:
            query = query.where(AuditEvent.action == action)
        else:
            query = query.where(col(AuditEvent.action).startswith(f"{action}."))
    rows = list(session.exec(query))
    page = rows[:limit]
    return AuditPage(
        items=[AuditEventPublic.model_validate(r) for r in page],
        next_before=page[-1].id if len(rows) > limit else None,
    )
