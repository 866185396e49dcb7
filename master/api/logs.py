"""Log routes: history from any line on, and a live Server-Sent Events stream."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from master.api.deps import MAX_INT64, JobDep, StateDep
from master.api.errors import documented, event_stream
from master.logs import ArchivedLog
from master.models import Job, JobAttempt
from master.state import MasterState
from shared.errors import InvalidRequest
from shared.streams import LogBatch, LogPosition

router = APIRouter(prefix="/jobs/{job_id}/logs", tags=["logs"], responses=documented(404, 422, 503))

#: A comment line keeps idle SSE connections open through proxies that drop silent ones.
KEEPALIVE_SECONDS = 15.0
SSE_BATCH_LINES = 5000


class LogLine(BaseModel):
    attempt: int
    line: int
    text: str


class LogPage(BaseModel):
    lines: list[LogLine]
    #: Pass as `after` to continue; null when there are no lines yet.
    next: str | None
    #: The job has ended and every line of it has been returned.
    complete: bool


def parse_after(after: str | None) -> LogPosition | None:
    if not after:
        return None
    try:
        position = LogPosition.parse(after)
    except ValueError:
        position = None
    # Both halves become a Redis stream id, which holds two unsigned 64-bit numbers: anything else
    # would come back from Redis as an error, and the client is at fault, not Redis.
    if position is None or not (0 <= position.attempt <= MAX_INT64 and 0 <= position.line <= MAX_INT64):
        raise InvalidRequest("after must look like '<attempt>-<line>', e.g. '1-99'", field="after")
    return position


def _snapshot(state: MasterState, job_id: int) -> tuple[bool, list[ArchivedLog]]:
    """Whether the job has ended, and which attempt logs are archived in S3."""
    with Session(state.engine) as session:
        job = session.get(Job, job_id)
        rows = session.exec(
            select(JobAttempt.number, JobAttempt.log_key).where(
                JobAttempt.job_id == job_id, col(JobAttempt.log_key).is_not(None)
            )
        ).all()
    return bool(job and job.status.terminal), [ArchivedLog(n, k) for n, k in rows if k]


@router.get("", response_model=LogPage)
async def read_logs(
    job: JobDep,
    state: StateDep,
    after: Annotated[str | None, Query(description="Last line already seen, '<attempt>-<line>'")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> LogPage:
    """Log lines in order, after a given line; works during and after the job."""
    position = parse_after(after)
    # Read the status first: once a job has ended, all its lines are stored, so a read after that
    # which comes back short has everything.
    terminal, archives = await run_in_threadpool(_snapshot, state, job.id)
    batches = await state.logs.read(job.id, archives, position, limit)  # type: ignore[arg-type]
    lines = [
        LogLine(attempt=b.attempt, line=b.first + i, text=t) for b in batches for i, t in enumerate(b.lines)
    ]
    lines = lines[:limit]
    last = LogPosition(lines[-1].attempt, lines[-1].line) if lines else position
    return LogPage(lines=lines, next=str(last) if last else None, complete=terminal and len(lines) < limit)


def _sse(event: str, data: dict, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


@router.get("/stream", response_class=StreamingResponse, responses=event_stream())
async def stream_logs(
    job: JobDep,
    state: StateDep,
    after: Annotated[str | None, Query(description="Start after this line, '<attempt>-<line>'")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: `log` events with the history, then live lines, then one `end` event."""
    position = parse_after(after or last_event_id)
    job_id: int = job.id  # type: ignore[assignment]

    async def events() -> AsyncIterator[str]:
        pos = position
        quiet_since = time.monotonic()
        while True:
            terminal, archives = await run_in_threadpool(_snapshot, state, job_id)
            batches: list[LogBatch] = await state.logs.read(job_id, archives, pos, SSE_BATCH_LINES)
            for batch in batches:
                pos = batch.last
                payload = {"attempt": batch.attempt, "first": batch.first, "lines": batch.lines}
                yield _sse("log", payload, str(pos))
            if batches:
                quiet_since = time.monotonic()
                continue
            if terminal:
                status = await run_in_threadpool(_status, state, job_id)
                yield _sse("end", {"status": status})
                return
            if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield ": keepalive\n\n"
            await state.logs.wait(job_id, pos, timeout_ms=1000)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _status(state: MasterState, job_id: int) -> str:
    with Session(state.engine) as session:
        job = session.get(Job, job_id)
        return job.status.value if job else "unknown"
