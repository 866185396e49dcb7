"""Dependencies routes ask for; routes never build engines or clients themselves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlmodel import Session

from master.auth.callers import NOBODY, Caller
from master.auth.permissions import require_admin, require_writer, sees_details
from master.models import Job
from master.state import MasterState
from shared.errors import NotFound

#: Ids and offsets are 64-bit signed in both databases; a larger number is bad input (422), not a
#: driver overflow (500).
MAX_INT64 = 2**63 - 1
#: Ids of the tables keyed by a plain integer (tokens, sweeps, webhooks) are 32-bit in PostgreSQL.
MAX_INT32 = 2**31 - 1

JobId = Annotated[int, Path(ge=1, le=MAX_INT64, description="The job's id")]
#: A row count to skip, for paging.
Offset = Annotated[int, Query(ge=0, le=MAX_INT64, description="Rows to skip")]


async def get_state(request: Request) -> MasterState:
    # async: a plain def would cost every request a hop through the thread pool to read one attribute.
    return request.app.state.master


StateDep = Annotated[MasterState, Depends(get_state)]


#: Declared so the OpenAPI schema lists the bearer scheme on every route (and Swagger's Authorize
#: button works); the check itself is `Authenticator.caller`, which reads the cookie too.
bearer = OAuth2PasswordBearer(tokenUrl="/api/auth/login", auto_error=False)


async def get_caller(
    request: Request, state: StateDep, _token: Annotated[str | None, Depends(bearer)]
) -> Caller:
    """The user behind the request's token or session cookie; 401 when there is none that works."""
    # async: a cached token is checked on the event loop, with no hop through the thread pool.
    caller = await state.auth.caller(request) if state.settings.auth_enabled else NOBODY
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_writer(caller: CallerDep) -> Caller:
    return require_writer(caller)


async def get_admin(caller: CallerDep) -> Caller:
    return require_admin(caller)


#: A member or an admin: may submit and upload.
WriterDep = Annotated[Caller, Depends(get_writer)]
AdminDep = Annotated[Caller, Depends(get_admin)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


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


async def get_visible_job(job: JobDep, caller: CallerDep, state: StateDep) -> Job:
    """A job whose spec, logs, metrics and artifacts the caller may read; 404 for one they may not
    (TRAINFARM_JOB_VISIBILITY=own and someone else's), as if it were not there."""
    if not sees_details(caller, job.owner, state.settings.job_visibility):
        raise NotFound(f"job {job.id} not found", field="job_id")
    return job


VisibleJobDep = Annotated[Job, Depends(get_visible_job)]
