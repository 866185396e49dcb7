"""Log routes: history from any line on, and a live Server-Sent Events stream."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from master.api.deps import MAX_INT64, CallerDep, JobId, StateDep, VisibleJobDep, client_address
from master.api.errors import documented, event_stream
from master.auth.callers import Caller
from master.auth.permissions import sees_details
from master.logs import ArchivedLog
from master.metrics import LOG_FOLLOWERS_LAGGED, LOG_STREAMS_REFUSED
from master.models import Job, JobAttempt
from master.state import MasterState
from shared.errors import InvalidRequest, NotFound, TooManyConnections
from shared.status import JobStatus
from shared.streams import LogBatch, LogPosition

router = APIRouter(prefix="/jobs/{job_id}/logs", tags=["logs"], responses=documented(401, 404, 422, 503))

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
    job: VisibleJobDep,
    state: StateDep,
    after: Annotated[str | None, Query(description="Last line already seen, '<attempt>-<line>'")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> LogPage:
    """Log lines in order, after a given line; works during and after the job."""
    position = parse_after(after)
    # Read the status first: once a job has ended, all its lines are stored, so a read after that
    # which comes back short has everything.
    job_id: int = job.id  # type: ignore[assignment]  # a stored job has its id
    terminal, archives = await run_in_threadpool(_snapshot, state, job_id)
    batches = await state.logs.read(job_id, archives, position, limit)
    lines = [
        LogLine(attempt=b.attempt, line=b.first + i, text=t) for b in batches for i, t in enumerate(b.lines)
    ]
    lines = lines[:limit]
    last = LogPosition(lines[-1].attempt, lines[-1].line) if lines else position
    return LogPage(lines=lines, next=str(last) if last else None, complete=terminal and len(lines) < limit)


def _sse(event: str, data: dict, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


class _HeldStream(StreamingResponse):
    """An SSE response that closes its generator and gives back its client's slot however it ends
    (finished, client gone, master stopping): a generator parked at a `yield` when its client goes
    would otherwise be closed only by the garbage collector, its subscription and slot held till then."""

    def __init__(self, events: AsyncGenerator[str, None], release: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._events.aclose()
            finally:
                self._release()


def client_key(request: Request, caller: Caller) -> str:
    """Whom a live-log stream counts against: its user (a dashboard in five tabs and a CLI are one
    person), or the client's address while authentication is off."""
    if caller.name is not None:
        return f"user:{caller.name}"
    return f"address:{client_address(request)}"


@router.get("/stream", response_class=StreamingResponse, responses={**event_stream(), **documented(429)})
async def stream_logs(
    request: Request,
    job_id: JobId,
    state: StateDep,
    caller: CallerDep,
    after: Annotated[str | None, Query(description="Start after this line, '<attempt>-<line>'")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: `log` events with the history, then live lines, then one `end` event."""
    position = parse_after(after or last_event_id)
    # Not JobDep: its session would stay open for as long as the stream, a pool connection each.
    status, archives = await run_in_threadpool(_opening, state, job_id, caller)
    key = client_key(request, caller)
    if not state.stream_cap.acquire(key):
        LOG_STREAMS_REFUSED.inc()
        raise TooManyConnections(
            f"this client has {state.stream_cap.limit} live-log streams open, the most allowed "
            "(TRAINFARM_SSE_MAX_CONNECTIONS_PER_CLIENT); close one or retry later"
        )
    events = _events(state, job_id, status, archives, position)
    return _HeldStream(events, lambda: state.stream_cap.release(key))


async def _events(
    state: MasterState,
    job_id: int,
    status: JobStatus,
    archives: list[ArchivedLog],
    pos: LogPosition | None,
) -> AsyncGenerator[str, None]:
    if status.terminal:
        # Every line is stored once a job has ended: the history is the whole of it.
        async for frame, _ in _history(state, job_id, archives, pos):
            yield frame
        yield _sse("end", {"status": status.value})
        return
    # Subscribed before the history is read, so that every line stored after that read reaches
    # the queue (master/log_hub.py says why nothing falls between them).
    sub = await state.hub.subscribe(job_id)
    try:
        catch_up = True
        while True:
            if catch_up or sub.lagged:
                if not catch_up:  # fell behind: the archives may have grown since
                    LOG_FOLLOWERS_LAGGED.inc()
                    _, archives = await run_in_threadpool(_snapshot, state, job_id)
                until = sub.resync()
                async for frame, last in _history(state, job_id, archives, pos, until):
                    yield frame
                    pos = last
                catch_up = False
            frames = []
            for item in sub.take():
                batch = item.batch.after(pos)
                if not batch.lines:
                    continue
                if batch is item.batch:  # whole: the frame is the same for every follower
                    item.frame = item.frame or _log_frame(batch)
                    frames.append(item.frame)
                else:
                    frames.append(_log_frame(batch))
                pos = batch.last
            if frames:  # one write for all that was waiting: each costs a trip through the ASGI stack
                yield "".join(frames)
            if sub.pending:
                continue
            if sub.ended is not None:
                yield _sse("end", {"status": sub.ended})
                return
            if sub.closed:  # the master is stopping; the client reconnects from its last event id
                return
            if not await sub.wait(KEEPALIVE_SECONDS):
                yield ": keepalive\n\n"
    finally:
        state.hub.unsubscribe(sub)


async def _history(
    state: MasterState,
    job_id: int,
    archives: list[ArchivedLog],
    pos: LogPosition | None,
    until: LogPosition | None = None,
) -> AsyncIterator[tuple[str, LogPosition]]:
    """Stored lines after `pos` as SSE frames, a read's worth at a time with its last position,
    through the entry at `until` (what follows it is queued), or until a read finds no more."""
    while until is None or pos is None or pos < until:
        async with state.hub.history_slots:
            batches = await state.logs.read(job_id, archives, pos, SSE_BATCH_LINES)
        if not batches:
            return
        # One write for the whole read: a frame each would cost a trip through the ASGI stack per
        # entry, and a history is often thousands of one-line entries.
        pos = batches[-1].last
        yield "".join(_log_frame(batch) for batch in batches), pos


def _log_frame(batch: LogBatch) -> str:
    payload = {"attempt": batch.attempt, "first": batch.first, "lines": batch.lines}
    return _sse("log", payload, str(batch.last))


def _opening(state: MasterState, job_id: int, caller: Caller) -> tuple[JobStatus, list[ArchivedLog]]:
    """The job's status and archived logs as a stream opens; 404 for a job that does not exist or
    whose log the caller may not read."""
    with Session(state.engine) as session:
        job = session.get(Job, job_id)
        if job is None or not sees_details(caller, job.owner, state.settings.job_visibility):
            raise NotFound(f"job {job_id} not found", field="job_id")
        status = job.status
    return status, _snapshot(state, job_id)[1]
