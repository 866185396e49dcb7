"""GET /api/compare: 2 to 20 runs side by side, as the compare view and `trainfarm compare` draw them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlmodel import col, select

from master.api.deps import MAX_INT64, CallerDep, SessionDep, StateDep
from master.api.errors import documented
from master.auth.permissions import sees_details
from master.experiments.compare import XAxis, final_table, spec_table
from master.experiments.compare_reader import SeriesCache, chart_series
from master.models import Job
from shared.errors import InvalidRequest, NotFound
from shared.events import MAX_METRIC_NAME
from shared.status import JobStatus

router = APIRouter(tags=["compare"], responses=documented(400, 401, 403, 404, 409, 422, 503))

MIN_JOBS, MAX_JOBS = 2, 20
JOB_ID = re.compile(r"[0-9]{1,19}")
#: What a metric name in the filter can look like: what a job may report (shared/events.py).
METRIC_FILTER = re.compile(rf"^[^\x00]{{1,{MAX_METRIC_NAME}}}$")


class CompareJob(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    owner: str | None
    project: str
    tags: list[str]
    status: JobStatus
    created_at: datetime
    finished_at: datetime | None
    rerun_of: int | None
    sweep_id: int | None
    trial: int | None


class CompareSeries(BaseModel):
    job_id: int
    #: Step or epoch, as `x` of the answer says; at most `points` of them, first and last always kept.
    x: list[int | float]
    y: list[int | float]
    #: Points the job stored for this metric, before downsampling.
    stored: int


class CompareField(BaseModel):
    field: str
    #: One per job, in the order of `jobs`; null where the job's spec lacks the field.
    values: list[Any]
    differs: bool


class CompareFinal(BaseModel):
    metric: str
    #: Each job's last reported value, exactly as stored; null where it reported none.
    values: list[float | None]
    #: The job with the best value (lowest where `lower_is_better`), or null.
    best: int | None
    lower_is_better: bool


class ComparePublic(BaseModel):
    x: XAxis
    jobs: list[CompareJob]
    #: Per metric, one series per job that reported it.
    metrics: dict[str, list[CompareSeries]]
    spec: list[CompareField]
    final: list[CompareFinal]


def parse_job_ids(raw: str) -> list[int]:
    words = [w.strip() for w in raw.split(",") if w.strip()]
    ids = []
    for word in words:
        # ASCII digits only: str.isdigit() takes "²", which int() refuses.
        if not JOB_ID.fullmatch(word) or not 1 <= int(word) <= MAX_INT64:
            raise InvalidRequest(f"'{word[:32]}' is not a job id", field="jobs")
        ids.append(int(word))
    if len(set(ids)) != len(ids):
        raise InvalidRequest("each job may be named once", field="jobs")
    if not MIN_JOBS <= len(ids) <= MAX_JOBS:
        raise InvalidRequest(f"compare {MIN_JOBS} to {MAX_JOBS} jobs, got {len(ids)}", field="jobs")
    return ids


def series_cache(request: Request) -> SeriesCache:
    """The app's one cache (made on first use): per app, so two farms in one process never share it."""
    cache = getattr(request.app.state, "compare_series", None)
    if cache is None:
        cache = request.app.state.compare_series = SeriesCache()
    return cache


@router.get("/compare", response_model=ComparePublic)
def compare(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    state: StateDep,
    jobs: Annotated[
        str,
        Query(
            max_length=512,
            pattern=r"^[0-9]{1,19}(,[0-9]{1,19})*$",
            description="2 to 20 distinct job ids, comma-separated: 12,14,15",
        ),
    ],
    x: Annotated[XAxis, Query(description="What the charts' x axis is")] = "step",
    points: Annotated[int, Query(ge=10, le=5000, description="Most points per chart line")] = 500,
    metric: Annotated[
        list[str] | None,
        Query(max_length=50, description="Only these metrics (repeat it); default: every metric"),
    ] = None,
) -> JSONResponse:
    """Several runs side by side: each metric's series per job (downsampled to `points` with LTTB,
    first and last point kept), the spec fields with those that differ marked, and each job's final
    metrics (exact) with the best job per metric."""
    ids = parse_job_ids(jobs)
    for i, name in enumerate(metric or []):
        if not METRIC_FILTER.fullmatch(name):
            raise InvalidRequest(f"'{name[:64]}' is not a metric name", field=f"metric[{i}]")
    found = {job.id: job for job in session.exec(select(Job).where(col(Job.id).in_(ids)))}
    visibility = state.settings.job_visibility
    for job_id in ids:
        job = found.get(job_id)
        # Someone else's job under TRAINFARM_JOB_VISIBILITY=own reads as missing, as everywhere.
        if job is None or not sees_details(caller, job.owner, visibility):
            raise NotFound(f"job {job_id} not found", field="jobs")
    ordered = [found[job_id] for job_id in ids]
    wanted = set(metric) if metric else None
    series = chart_series(session, series_cache(request), ids, x, points, wanted)
    names = sorted({name for per_job in series.values() for name in per_job})
    finals = [{k: v for k, v in job.metrics.items() if wanted is None or k in wanted} for job in ordered]
    answer = {
        "x": x,
        "jobs": [CompareJob.model_validate(job).model_dump(mode="json") for job in ordered],
        # Plain lists, not models: up to 20 jobs x metrics x 5,000 points need no validating.
        "metrics": {
            name: [
                {"job_id": s.job_id, "x": s.x, "y": s.y, "stored": s.stored}
                for job_id in ids
                if (s := series[job_id].get(name)) is not None
            ]
            for name in names
        },
        "spec": [vars(f) for f in spec_table([job.spec for job in ordered])],
        "final": [vars(f) for f in final_table(ids, finals)],
    }
    return JSONResponse(answer)
