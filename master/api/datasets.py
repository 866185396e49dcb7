"""Dataset routes: streamed upload into S3 and listing."""

from __future__ import annotations

from typing import Annotated

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from master import audit
from master.api.deps import SessionDep, StateDep, WriterDep, client_address
from master.api.errors import documented, raw_body
from master.auth.permissions import check_may_change
from master.models import Dataset, DatasetPublic, utcnow
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.schemas import NAME_PATTERN

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=documented(401, 403, 404, 409, 422, 503))


class ChunkReader:
    """A blocking `read(n)` over chunks that arrive on the event loop, for the S3 SDK's thread.

    Memory held is one S3 part plus a few request chunks, whatever the file size.
    """

    def __init__(self, chunks: MemoryObjectReceiveStream[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._done = False

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buffer) < n):
            try:
                self._buffer += anyio.from_thread.run(self._chunks.receive)
            except anyio.EndOfStream:
                self._done = True
        size = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out


@router.post(
    "", status_code=201, response_model=DatasetPublic, openapi_extra=raw_body("The file's bytes, any size")
)
async def upload_dataset(
    request: Request,
    state: StateDep,
    session: SessionDep,
    caller: WriterDep,
    name: Annotated[str, Query(pattern=NAME_PATTERN, description="Dataset name, e.g. digits.csv")],
    overwrite: bool = False,
) -> Dataset:
    """Upload a dataset as the raw request body; it is streamed into S3, never held in memory."""
    existing = session.exec(select(Dataset).where(Dataset.name == name)).first()
    if existing is not None and not overwrite:
        raise Conflict(
            f"dataset '{name}' exists; pass overwrite=true (CLI: --overwrite) to replace it", field="name"
        )
    if existing is not None:
        check_may_change(caller, existing.owner, f"dataset '{name}'", "replace")
    key = f"datasets/{name}"
    send, receive = anyio.create_memory_object_stream[bytes](max_buffer_size=16)
    reader = ChunkReader(receive)

    async def pump() -> None:
        async with send:
            async for chunk in request.stream():
                if chunk:
                    await send.send(chunk)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            info = await anyio.to_thread.run_sync(state.store.put_stream, key, reader)
    except BaseExceptionGroup as group:
        # anyio wraps even a lone error (storage unreachable, say) in a group, which no handler
        # maps; hand the error itself on, so it gets its own answer (503) instead of a 500.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if info.size == 0:
        raise InvalidRequest("the request body is empty; send the file's bytes", field="body")
    row = existing or Dataset(name=name, key=key, size=0, sha256="", etag="", owner=caller.name)
    row.size, row.sha256, row.etag, row.created_at = info.size, info.sha256 or "", info.etag, utcnow()
    session.add(row)
    detail = {"size": info.size, "sha256": info.sha256, "replaced": existing is not None}
    audit.record(session, caller.name, "dataset.upload", f"dataset {name}", detail, client_address(request))
    try:
        session.commit()
    except IntegrityError:
        # Two first uploads of one name at once: the other one's row is in. Its bytes and these
        # share the key; the client is told to look before it uploads again.
        session.rollback()
        raise Conflict(
            f"dataset '{name}' was uploaded by someone else meanwhile; check it, then pass "
            "overwrite=true if you may replace it",
            field="name",
        ) from None
    session.refresh(row)
    return row


@router.get("", response_model=list[DatasetPublic])
def list_datasets(session: SessionDep) -> list[Dataset]:
    """All uploaded datasets, by name."""
    return list(session.exec(select(Dataset).order_by(col(Dataset.name))))


@router.get("/{name}", response_model=DatasetPublic)
def get_dataset(
    name: Annotated[str, Path(pattern=NAME_PATTERN, description="Dataset name")], session: SessionDep
) -> Dataset:
    """One dataset's size and checksum."""
    row = session.exec(select(Dataset).where(Dataset.name == name)).first()
    if row is None:
        raise NotFound(f"dataset '{name}' not found", field="name")
    return row
