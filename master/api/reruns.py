"""POST /api/jobs/{id}/rerun: the job again, with changes, recording where it came from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from master.admission import Admission
from master.api.deps import SessionDep, StateDep, VisibleJobDep, WriterDep
from master.api.errors import documented
from master.api.jobs import store_jobs
from master.experiments.rerun import changed_spec
from master.fairshare.submission import check_priority
from master.lifecycle import Origin, check_code
from master.models import JobPublic
from master.placement import check_fits

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=documented(400, 401, 403, 404, 409, 422, 503))


class RerunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    changes: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Spec fields to change, as in a submission; `hyperparameters` and `env` merge key by key "
            "(a null value removes the key), other fields replace the old value"
        ),
    )


@router.post("/{job_id}/rerun", status_code=201, response_model=JobPublic, dependencies=[Admission])
def rerun(
    job: VisibleJobDep,
    body: RerunRequest,
    session: SessionDep,
    state: StateDep,
    caller: WriterDep,
    request: Request,
) -> JobPublic:
    """Submit the job's spec again with `changes`, as the caller; the new job's `rerun_of` names
    this one, and this one's detail lists it under `reruns`. Any job the caller may read can be
    re-run (it becomes the caller's own)."""
    spec = changed_spec(job.spec, body.changes)
    check_priority(caller, spec, state.settings.member_max_priority, field="changes.priority")
    check_fits(spec, state.capacities.largest(session), field="changes.devices")
    check_code(state.store, [spec])
    [new] = store_jobs(session, state, [spec], caller, request, [Origin(rerun_of=job.id)])
    return new
