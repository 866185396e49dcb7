"""Code bundle routes: is a bundle there, and a verified upload of one (`trainfarm submit DIR`)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from master import audit
from master.api.deps import StateDep, WriterDep, client_address
from master.api.errors import documented, raw_body
from master.models import CodeBundle
from shared.errors import InvalidRequest, NotFound
from shared.schemas import CODE_DIGEST_PATTERN
from shared.storage import ArtifactStore, code_bundle_key

router = APIRouter(prefix="/code", tags=["code"], responses=documented(401, 403, 404, 422, 503))

Digest = Annotated[str, PathParam(pattern=CODE_DIGEST_PATTERN, description="SHA-256 of the .tar.gz, hex")]


class BundleTooLarge(InvalidRequest):
    http_status = 413


class CodeBundlePublic(BaseModel):
    digest: str
    size: int


def _stat(store: ArtifactStore, digest: str) -> CodeBundlePublic:
    try:
        info = store.stat(code_bundle_key(digest))
    except NotFound:
        raise NotFound(f"code bundle {digest} not found", field="digest") from None
    return CodeBundlePublic(digest=digest, size=info.size)


# HEAD answers the same, out of the OpenAPI schema (one operation id per route there).
@router.api_route("/{digest}", methods=["HEAD"], response_model=CodeBundlePublic, include_in_schema=False)
@router.get("/{digest}", response_model=CodeBundlePublic)
async def get_code_bundle(digest: Digest, state: StateDep, response: Response) -> CodeBundlePublic:
    """Whether a code bundle is stored, and its size; 404 when it is not."""
    bundle = await anyio.to_thread.run_sync(_stat, state.store, digest)
    response.headers["X-Bundle-Size"] = str(bundle.size)
    return bundle


@router.put(
    "/{digest}",
    response_model=CodeBundlePublic,
    status_code=201,
    responses={200: {"description": "Already stored"}, 413: {"description": "Over the size limit"}},
    openapi_extra=raw_body("The bundle's bytes (a .tar.gz)"),
)
async def put_code_bundle(
    digest: Digest, request: Request, state: StateDep, response: Response, caller: WriterDep
) -> CodeBundlePublic:
    """Upload a code bundle (a .tar.gz) as the raw body; stored only if its SHA-256 is `digest`."""
    limit = state.settings.code_bundle_max_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit, int(length))
    # Staged on local disk and checked before anything reaches S3, so a wrong or cut-off body never
    # appears under its digest's key, not even for a moment.
    with tempfile.TemporaryDirectory(prefix="trainfarm-code-") as tmp:
        staged = Path(tmp) / "bundle.tar.gz"
        hashed, size = hashlib.sha256(), 0
        async with await anyio.open_file(staged, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                hashed.update(chunk)
                await fh.write(chunk)
        if size == 0:
            raise InvalidRequest("the request body is empty; send the bundle's bytes", field="body")
        if hashed.hexdigest() != digest:
            raise InvalidRequest(
                f"the body's SHA-256 is {hashed.hexdigest()}, not {digest}: upload corrupted or wrong digest",
                field="digest",
            )
        key = code_bundle_key(digest)
        if await anyio.to_thread.run_sync(state.store.exists, key):
            response.status_code = 200  # the same bytes are there already: nothing to do
        else:
            await anyio.to_thread.run_sync(state.store.put_file, key, staged)
            owner, address = caller.name, client_address(request)
            await anyio.to_thread.run_sync(_record, state.engine, digest, size, owner, address)
    return CodeBundlePublic(digest=digest, size=size)


def _record(engine: Engine, digest: str, size: int, owner: str | None, address: str) -> None:
    """Who uploaded the bundle first; the bytes are the same whoever sends them again."""
    with Session(engine) as session:
        if session.get(CodeBundle, digest) is None:
            session.add(CodeBundle(digest=digest, size=size, owner=owner))
            audit.record(session, owner, "code.upload", f"code {digest[:12]}", {"size": size}, address)
            try:
                session.commit()
            except IntegrityError:  # a second upload of the same bytes recorded it a moment before
                session.rollback()


def _too_large(limit: int, size: int | None = None) -> BundleTooLarge:
    of = f" of {size} bytes" if size is not None else ""
    return BundleTooLarge(
        f"code bundle{of} is over the master's limit of {limit} bytes "
        "(TRAINFARM_CODE_BUNDLE_MAX_BYTES); leave data out of it and upload datasets separately",
        field="body",
    )
