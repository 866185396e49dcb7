"""Dependencies routes ask for; routes never build engines or clients themselves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlmodel import Session

from master.models import Job
from master.state import MasterState
from shared.errors import NotFound

#: Ids and offsets are 64-bit signed in both databases; a larger number is bad input (422), not a
#: driver overflow (500).
MAX_INT64 = 2**63 - 1

JobId = Annotated[int, Path(ge=1, le=MAX_INT64, description="The job's id")]
#: A row count to skip, for paging.
Offset = Annotated[int, Query(ge=0, le=MAX_INT64, description="Rows to skip")]


async def get_state(request: Request) -> MasterState:
    # async: a plain def would cost every request a hop through the thread pool to read one attribute.
    return request.app.state.master


StateDep = Annotated[MasterState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with Session(state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_job(job_id: JobId, session: SessionDep) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found", field="job_id")
    return job


JobDep = Annotated[Job, Depends(get_job)]
