"""Artifact routes: what a job produced, and downloads streamed from S3."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse
from sqlmodel import col, select

from master.api.deps import SessionDep, StateDep, VisibleJobDep
from master.api.errors import documented, raw_answer
from master.models import Artifact, ArtifactPublic
from shared.errors import NotFound

router = APIRouter(
    prefix="/jobs/{job_id}/artifacts", tags=["artifacts"], responses=documented(401, 404, 422, 503)
)

#: Names are relative paths that came out of a job's output folder: no NUL byte, as long as the column.
ArtifactName = Annotated[str, Path(min_length=1, max_length=512, pattern=r"^[^\x00]+$")]


@router.get("", response_model=list[ArtifactPublic])
def list_artifacts(job: VisibleJobDep, session: SessionDep) -> list[Artifact]:
    """Files the job produced: name, size and SHA-256."""
    return list(session.exec(select(Artifact).where(Artifact.job_id == job.id).order_by(col(Artifact.name))))


@router.get("/{name:path}", response_class=StreamingResponse, responses=raw_answer("The artifact's bytes"))
def download_artifact(
    name: ArtifactName, job: VisibleJobDep, session: SessionDep, state: StateDep
) -> StreamingResponse:
    """Download one artifact; 503 with Retry-After while storage is unreachable."""
    row = session.exec(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name)).first()
    if row is None:
        raise NotFound(f"job {job.id} has no artifact '{name}'", field="name")
    headers = {
        "Content-Disposition": f'attachment; filename="{name.rsplit("/", 1)[-1]}"',
        "Content-Length": str(row.size),
    }
    if row.sha256:
        headers["X-Checksum-SHA256"] = row.sha256
    # Opened here, before the answer starts: an unreachable store is still a 503, not a cut-off 200.
    body = state.store.iter_bytes(row.key)
    return StreamingResponse(body, media_type="application/octet-stream", headers=headers)
