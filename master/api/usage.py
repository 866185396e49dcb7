"""A job's resource use over time: the samples its workers took (GPUs, or CPU and memory)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import col, select

from master.api.deps import Offset, SessionDep, VisibleJobDep
from master.api.errors import documented
from master.models import JobUsage, UsagePublic

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=documented(401, 403, 404, 422, 503))


@router.get("/{job_id}/usage", response_model=list[UsagePublic])
def usage_history(
    job: VisibleJobDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Offset = 0,
) -> list[JobUsage]:
    """The job's resource-use samples, every attempt, oldest first; its summary is in `progress.usage`."""
    query = (
        select(JobUsage)
        .where(JobUsage.job_id == job.id)
        .order_by(col(JobUsage.id))
        .offset(offset)
        .limit(limit)
    )
    return list(session.exec(query))
