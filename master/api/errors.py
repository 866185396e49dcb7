"""One place that turns errors into HTTP answers: `{"error", "message", "field"}`."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from shared.errors import RetryableError, TrainfarmError

#: Seconds a client is asked to wait before trying again after a 503 (a dependency away for now).
RETRY_AFTER_SECONDS = "2"


class FieldError(BaseModel):
    field: str
    message: str


class ErrorPublic(BaseModel):
    """Every error answer: what kind of error, a message for people, and the request field at fault."""

    error: str
    message: str
    field: str | None
    #: Every field at fault, when a request had several (422 only).
    details: list[FieldError] | None = None


_DESCRIPTIONS = {
    400: "The body could not be read",
    401: "No valid token or session; the message says why (missing, unknown, expired, revoked)",
    403: "The user's role or ownership does not allow this",
    404: "Not found; `field` names what was looked for",
    409: "In conflict with the current state",
    413: "Over a size limit",
    422: "Invalid input; `field` names it",
    429: "Over a rate limit or connection cap; retry after `Retry-After` seconds",
    503: "Redis or storage is unavailable for now; retry after `Retry-After` seconds",
}


def raw_body(description: str) -> dict[str, Any]:
    """OpenAPI for a route that reads its body as a raw stream (FastAPI sees no body parameter)."""
    schema = {"type": "string", "format": "binary"}
    content = {"application/octet-stream": {"schema": schema}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def raw_answer(description: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a 200 that streams bytes rather than JSON."""
    schema = {"type": "string", "format": "binary"}
    return {200: {"description": description, "content": {"application/octet-stream": {"schema": schema}}}}


def event_stream() -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a 200 that is a Server-Sent Events stream: the schema is each event's."""
    event = {
        "type": "object",
        "properties": {
            "event": {"type": "string", "enum": ["log", "end"]},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "id": {"type": "string"},
        },
        "required": ["event", "data"],
    }
    content = {"text/event-stream": {"schema": event}}
    return {200: {"description": "Server-Sent Events, one `end` event last", "content": content}}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a router gives, for its OpenAPI: each one in the `ErrorPublic` shape."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorPublic, "description": _DESCRIPTIONS[code]}
        if code in (429, 503):
            retry = {"description": "Seconds to wait", "schema": {"type": "string", "pattern": "^[0-9]+$"}}
            out[code]["headers"] = {"Retry-After": retry}
    return out


def field_path(loc: tuple | list) -> str:
    """("body", "datasets", 0) -> "datasets[0]"; the request part is implied by the route."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(TrainfarmError)
    async def _trainfarm_error(_request: Request, exc: TrainfarmError) -> JSONResponse:
        body = {"error": type(exc).__name__, "message": exc.message, "field": exc.field}
        # Retryable (storage unreachable, say): the client should come back, and is told when.
        headers = exc.headers()
        if headers is None and isinstance(exc, RetryableError):
            headers = {"Retry-After": RETRY_AFTER_SECONDS}
        return JSONResponse(body, status_code=exc.http_status, headers=headers)

    @app.exception_handler(redis.RedisError)
    async def _redis_error(_request: Request, exc: redis.RedisError) -> JSONResponse:
        # Redis restarting or unreachable: a temporary condition, not a bug; clients retry.
        body = {"error": "Unavailable", "message": f"Redis is unavailable: {exc}", "field": None}
        return JSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's and Starlette's own (no such route, a body that is not text): the same shape.
        name = "".join(word.capitalize() for word in HTTPStatus(exc.status_code).phrase.split())
        field = "body" if exc.status_code == 400 else None
        body = {"error": name, "message": str(exc.detail), "field": field}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            field = field_path(err.get("loc", ()))
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                message = "unknown field"
            if err.get("type") == "json_invalid":  # its loc is a character offset, not a field
                field, message = (
                    "body",
                    f"not valid JSON ({message.lower()} at character {field.strip('[]')})",
                )
            details.append({"field": field, "message": message})
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        body = {
            "error": "InvalidRequest",
            "message": summary,
            "field": details[0]["field"],
            "details": details,
        }
        return JSONResponse(body, status_code=422)
