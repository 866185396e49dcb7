"""Sweep routes: create, list, inspect and cancel hyperparameter sweeps (master/sweeps/ runs them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlmodel import Session, col, func, select

from master import audit
from master.admission import Admission
from master.api.deps import MAX_INT32, CallerDep, SessionDep, StateDep, WriterDep, client_address
from master.api.errors import documented
from master.api.jobs import OWNER_FILTER
from master.auth.callers import Caller
from master.auth.permissions import check_may_change, sees_details
from master.fairshare.submission import check_priority
from master.lifecycle import check_code, check_datasets, stop_job
from master.models import (
    Job,
    Sweep,
    SweepDetail,
    SweepPublic,
    SweepsPublic,
    SweepTrial,
    SweepTrialPublic,
)
from master.placement import check_fits
from master.sweeps.ending import end_sweep
from master.sweeps.trials import unended_jobs
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.schemas import NAME_PATTERN
from shared.status import JobStatus
from shared.sweeps import SweepSpec

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=documented(400, 401, 403, 404, 409, 422, 503))

SweepId = Annotated[int, Path(ge=1, le=MAX_INT32, description="The sweep's id")]
SWEEP_STATUSES = ("running", "succeeded", "failed", "cancelled")


def get_sweep(sweep_id: SweepId, session: SessionDep) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found", field="sweep_id")
    return sweep


SweepDep = Annotated[Sweep, Depends(get_sweep)]


def under_base(check: Callable[[], None]) -> None:
    """Run a submission check on the base spec; its error names the field under `base.`."""
    try:
        check()
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, field=f"base.{exc.field}" if exc.field else "base") from None


def trial_counts(session: Session, sweep_ids: list[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {i: {} for i in sweep_ids}
    if not sweep_ids:
        return counts
    query = (
        select(SweepTrial.sweep_id, SweepTrial.state, func.count())
        .where(col(SweepTrial.sweep_id).in_(sweep_ids))
        .group_by(col(SweepTrial.sweep_id), col(SweepTrial.state))
    )
    for sweep_id, state, n in session.exec(query):
        counts[sweep_id][state] = n
    return counts


def public_sweep(sweep: Sweep, counts: dict[str, int], caller: Caller, state: StateDep) -> SweepPublic:
    hidden = not sees_details(caller, sweep.owner, state.settings.job_visibility)
    update = {"counts": counts, **({"spec": {}, "error": None} if hidden else {})}
    return SweepPublic.model_validate(sweep, update=update)


@router.post("", status_code=201, response_model=SweepPublic, dependencies=[Admission])
def create_sweep(
    spec: SweepSpec, session: SessionDep, state: StateDep, caller: WriterDep, request: Request
) -> SweepPublic:
    """Start a sweep: its base job is checked as a submission would be, then the sweep driver starts
    trials (up to `parallelism` at once) until `budget` have run."""
    base = spec.base
    check_priority(caller, base, state.settings.member_max_priority, field="base.priority")
    check_fits(base, state.capacities.largest(session), field="base.devices")
    under_base(lambda: check_code(state.store, [base]))
    under_base(lambda: check_datasets(session, base))
    sweep = Sweep(name=spec.name, owner=caller.name, project=base.project, spec=spec.model_dump(mode="json"))
    session.add(sweep)
    session.flush()
    detail = {"name": spec.name, "budget": spec.trials_to_run, "parallelism": spec.parallelism}
    audit.record(session, caller.name, "sweep.create", f"sweep {sweep.id}", detail, client_address(request))
    session.commit()
    session.refresh(sweep)
    return public_sweep(sweep, {}, caller, state)


@router.get("", response_model=SweepsPublic)
def list_sweeps(
    session: SessionDep,
    caller: CallerDep,
    state: StateDep,
    status: Annotated[str | None, Query(pattern=f"^({'|'.join(SWEEP_STATUSES)})$")] = None,
    project: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    owner: Annotated[
        str | None, Query(pattern=OWNER_FILTER, description="A user's name, or `me` for your own sweeps")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_INT32, description="Return sweeps older than this id (next page)")
    ] = None,
) -> SweepsPublic:
    """Sweeps, newest first, filtered by status, project and owner, one page at a time."""
    query = select(Sweep).order_by(col(Sweep.id).desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Sweep.status == status)
    if project is not None:
        query = query.where(Sweep.project == project)
    if owner is not None:
        query = query.where(Sweep.owner == (caller.name if owner == "me" else owner))
    if before is not None:
        query = query.where(col(Sweep.id) < before)
    rows = list(session.exec(query))
    page, more = rows[:limit], len(rows) > limit
    counts = trial_counts(session, [s.id for s in page if s.id is not None])
    items = [public_sweep(s, counts[s.id or 0], caller, state) for s in page]
    return SweepsPublic(items=items, next_before=page[-1].id if more else None)


@router.get("/{sweep_id}", response_model=SweepDetail)
def get_sweep_detail(sweep: SweepDep, session: SessionDep, caller: CallerDep, state: StateDep) -> SweepDetail:
    """One sweep with its trials, oldest first, each with its job's status. Someone else's sweep
    under TRAINFARM_JOB_VISIBILITY=own is not found, as their jobs' details are not."""
    if not sees_details(caller, sweep.owner, state.settings.job_visibility):
        raise NotFound(f"sweep {sweep.id} not found", field="sweep_id")
    trials = list(
        session.exec(
            select(SweepTrial).where(SweepTrial.sweep_id == sweep.id).order_by(col(SweepTrial.number))
        )
    )
    ids = [t.job_id for t in trials if t.job_id is not None]
    statuses: dict[int | None, str] = {}
    if ids:
        for job_id, status in session.exec(select(Job.id, Job.status).where(col(Job.id).in_(ids))):
            statuses[job_id] = JobStatus(status).value
    public = [
        SweepTrialPublic.model_validate(t, update={"job_status": statuses.get(t.job_id)}) for t in trials
    ]
    counts = dict(Counter(t.state for t in trials))
    return SweepDetail.model_validate(
        {**public_sweep(sweep, counts, caller, state).model_dump(), "trials": public}
    )


@router.post("/{sweep_id}/cancel", response_model=SweepPublic)
def cancel_sweep(
    sweep: SweepDep, session: SessionDep, state: StateDep, caller: CallerDep, request: Request
) -> SweepPublic:
    """Cancel a running sweep: no trial starts any more, and its trials' jobs are cancelled (a
    queued one never runs, a running one is stopped within seconds)."""
    check_may_change(caller, sweep.owner, f"sweep {sweep.id}", "cancel")
    # Locked: the driver, which starts trials under the same lock, sees the cancel before its next.
    locked = session.exec(select(Sweep).where(Sweep.id == sweep.id).with_for_update()).one()
    if locked.status != "running":
        raise Conflict(f"sweep {locked.id} has already ended ({locked.status})")
    jobs = unended_jobs(session, locked.id or 0)
    for job in jobs:
        stop_job(session, state.broker, job, JobStatus.CANCELLED)
    end_sweep(locked, "cancelled", None)
    session.add(locked)
    audit.record(
        session,
        caller.name,
        "sweep.cancel",
        f"sweep {locked.id}",
        {"jobs": [j.id for j in jobs]},
        client_address(request),
    )
    session.commit()
    for job in jobs:
        state.admitter.forget(job.id or 0)
    session.refresh(locked)
    return public_sweep(locked, trial_counts(session, [locked.id or 0])[locked.id or 0], caller, state)
