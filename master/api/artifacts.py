"""Artifact routes: what a job produced, and downloads streamed from S3."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlmodel import col, select

from master.api.deps import JobDep, SessionDep, StateDep
from master.models import Artifact, ArtifactPublic
from shared.errors import NotFound

router = APIRouter(prefix="/jobs/{job_id}/artifacts", tags=["artifacts"])


@router.get("", response_model=list[ArtifactPublic])
def list_artifacts(job: JobDep, session: SessionDep) -> list[Artifact]:
    """Files the job produced: name, size and SHA-256."""
    return list(session.exec(select(Artifact).where(Artifact.job_id == job.id).order_by(col(Artifact.name))))


@router.get("/{name:path}")
def download_artifact(name: str, job: JobDep, session: SessionDep, state: StateDep) -> StreamingResponse:
    """Download one artifact."""
    row = session.exec(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name)).first()
    if row is None:
        raise NotFound(f"job {job.id} has no artifact '{name}'", field="name")
    headers = {
        "Content-Disposition": f'attachment; filename="{name.rsplit("/", 1)[-1]}"',
        "Content-Length": str(row.size),
    }
    if row.sha256:
        headers["X-Checksum-SHA256"] = row.sha256
    return StreamingResponse(
        state.store.iter_bytes(row.key), media_type="application/octet-stream", headers=headers
    )
