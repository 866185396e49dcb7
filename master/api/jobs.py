"""Job routes: submit, list, inspect, cancel, metrics history."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from master.admission import Admission
from master.api.deps import (
    MAX_INT32,
    MAX_INT64,
    CallerDep,
    JobDep,
    Offset,
    SessionDep,
    StateDep,
    VisibleJobDep,
    WriterDep,
    client_address,
)
from master.api.errors import documented
from master.auth.callers import Caller
from master.auth.permissions import Visibility, check_may_change, sees_details
from master.fairshare.submission import check_priority, check_queued_cap
from master.fairshare.view import wait_reasons
from master.lifecycle import Origin, cancel_job, check_code, submit_jobs
from master.metrics import JOBS_SUBMITTED
from master.models import (
    AttemptPublic,
    Job,
    JobAttempt,
    JobDetail,
    JobMetric,
    JobPublic,
    JobsPublic,
    JobTag,
    MetricPublic,
)
from master.placement import check_fits
from master.state import MasterState
from shared.errors import InvalidRequest
from shared.schemas import NAME_PATTERN, TAG_PATTERN, JobSpec
from shared.status import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=documented(400, 401, 403, 404, 409, 422, 503))

#: The largest 32-bit id (sweeps.id).
#: A hyperparameter sweep fits in one request up to this many jobs.
MAX_BATCH = 1000
#: What a queue name can look like in a filter (a NUL byte, say, would reach PostgreSQL as an error).
QUEUE_FILTER = r"^[A-Za-z0-9._-]+$"
#: What an owner filter can be: a user name, or `me`.
OWNER_FILTER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: What someone else's job shows under TRAINFARM_JOB_VISIBILITY=own: status, queue, owner, timing.
HIDDEN: dict[str, object] = {
    "spec": {},
    "log_tail": None,
    "error": None,
    "progress": {},
    "metrics": {},
    "warnings": [],
}


class JobBatch(BaseModel):
    jobs: list[JobSpec] = Field(min_length=1, max_length=MAX_BATCH)


def public_job(job: Job, caller: Caller, visibility: Visibility, wait_reason: str | None = None) -> JobPublic:
    if sees_details(caller, job.owner, visibility):
        return JobPublic.model_validate(job, update={"wait_reason": wait_reason})
    return JobPublic.model_validate(
        job, update={**HIDDEN, "details_hidden": True, "wait_reason": wait_reason}
    )


def store_jobs(
    session: Session,
    state: MasterState,
    specs: list[JobSpec],
    caller: Caller,
    request: Request,
    origins: list[Origin] | None = None,
) -> list[JobPublic]:
    """Store validated jobs and let admission decide on them; the answer says, for each, whether it
    was sent to its queue or why it waits."""
    check_queued_cap(session, state.settings, caller.name, specs)
    stored = submit_jobs(session, specs, caller.name, client_address(request), origins)
    state.admitter.submitted(attempt.id for _, attempt in stored if attempt.id is not None)
    for spec in specs:
        JOBS_SUBMITTED.labels(spec.queue).inc()
    jobs = [job for job, _ in stored]
    waits = wait_reasons(session, state.admitter.view, jobs)
    visibility = state.settings.job_visibility
    return [public_job(job, caller, visibility, waits.get(job.id or 0)) for job in jobs]


@router.post("", status_code=201, response_model=JobPublic, dependencies=[Admission])
def submit_job(
    spec: JobSpec, session: SessionDep, state: StateDep, caller: WriterDep, request: Request
) -> JobPublic:
    """Validate a job spec and store the job; it starts once admission (fair share) lets it, and
    the answer's `wait_reason` says whether it was sent to its queue already or why it waits."""
    check_priority(caller, spec, state.settings.member_max_priority)
    check_fits(spec, state.capacities.largest(session))
    check_code(state.store, [spec])
    [job] = store_jobs(session, state, [spec], caller, request)
    return job


@router.post("/batch", status_code=201, response_model=list[JobPublic], dependencies=[Admission])
def submit_batch(
    batch: JobBatch, session: SessionDep, state: StateDep, caller: WriterDep, request: Request
) -> list[JobPublic]:
    """Submit many jobs at once (a sweep); all are validated before any is stored."""
    largest = state.capacities.largest(session)
    for i, spec in enumerate(batch.jobs):
        check_priority(caller, spec, state.settings.member_max_priority, field=f"jobs[{i}].priority")
        check_fits(spec, largest, field=f"jobs[{i}].devices")
    check_code(state.store, batch.jobs, batch=True)
    return store_jobs(session, state, batch.jobs, caller, request)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    state: StateDep,
    status: JobStatus | None = None,
    queue: Annotated[str | None, Query(max_length=32, pattern=QUEUE_FILTER)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_INT64, description="Return jobs older than this id (next page)")
    ] = None,
    owner: Annotated[
        str | None, Query(pattern=OWNER_FILTER, description="A user's name, or `me` for your own jobs")
    ] = None,
    project: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only this project's jobs")
    ] = None,
    tag: Annotated[
        list[str] | None,
        Query(
            max_length=8, description="Only jobs carrying this tag; repeat it for jobs carrying all of them"
        ),
    ] = None,
    # Sweep ids are 32-bit (sweeps.id, jobs.sweep_id): a larger one is a 422, not PostgreSQL's overflow.
    sweep: Annotated[int | None, Query(ge=1, le=MAX_INT32, description="Only this sweep's trials")] = None,
) -> JobsPublic:
    """Jobs, newest first, filtered by status, queue, owner, project, tags and sweep, one page at a
    time."""
    query = select(Job).order_by(col(Job.id).desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Job.status == status)
    if queue is not None:
        query = query.where(Job.queue == queue)
    if before is not None:
        query = query.where(col(Job.id) < before)
    if owner is not None:
        query = query.where(Job.owner == (caller.name if owner == "me" else owner))
    if project is not None:
        query = query.where(Job.project == project)
    if sweep is not None:
        query = query.where(Job.sweep_id == sweep)
    for i, wanted in enumerate(tag or []):
        if not re.fullmatch(TAG_PATTERN, wanted):
            raise InvalidRequest(
                f"tag {wanted[:64]!r} is not a tag (letters, digits, . _ : + -)", field=f"tag[{i}]"
            )
        query = query.where(col(Job.id).in_(select(JobTag.job_id).where(JobTag.tag == wanted)))
    rows = list(session.exec(query))
    page = rows[:limit]
    more = len(rows) > limit
    visibility = state.settings.job_visibility
    waits = wait_reasons(session, state.admitter.view, page)
    items = [public_job(j, caller, visibility, waits.get(j.id or 0)) for j in page]
    return JobsPublic(items=items, next_before=page[-1].id if more else None)


@router.get("/{job_id}", response_model=JobDetail)
def get_job(job: JobDep, session: SessionDep, caller: CallerDep, state: StateDep) -> JobDetail:
    """One job with all its attempts."""
    attempts = session.exec(
        select(JobAttempt).where(JobAttempt.job_id == job.id).order_by(col(JobAttempt.number))
    )
    waits = wait_reasons(session, state.admitter.view, [job])
    public = public_job(job, caller, state.settings.job_visibility, waits.get(job.id or 0))
    attempt_list = [AttemptPublic.model_validate(a) for a in attempts]
    if public.details_hidden:
        attempt_list = [
            a.model_copy(update={"error": None, "info": {}, "log_key": None}) for a in attempt_list
        ]
    reruns = list(session.exec(select(Job.id).where(Job.rerun_of == job.id).order_by(col(Job.id))))
    return JobDetail.model_validate({**public.model_dump(), "attempt_list": attempt_list, "reruns": reruns})


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel(job: JobDep, session: SessionDep, state: StateDep, caller: CallerDep, request: Request) -> Job:
    """Cancel a job: a queued one never runs; a running one is stopped within seconds."""
    check_may_change(caller, job.owner, f"job {job.id}", "cancel")
    cancelled = cancel_job(session, state.broker, job, caller.name, client_address(request))
    if cancelled.id is not None:
        state.admitter.forget(cancelled.id)  # it no longer waits, and any room it had goes to others
    return cancelled


@router.get("/{job_id}/metrics", response_model=list[MetricPublic])
def metrics_history(
    job: VisibleJobDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Offset = 0,
) -> list[JobMetric]:
    """Every metrics and progress report of the job, oldest first."""
    query = (
        select(JobMetric)
        .where(JobMetric.job_id == job.id)
        .order_by(col(JobMetric.id))
        .offset(offset)
        .limit(limit)
    )
    return list(session.exec(query))
