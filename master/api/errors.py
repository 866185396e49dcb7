"""One place that turns errors into HTTP answers: `{"error", "message", "field"}`."""

from __future__ import annotations

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from shared.errors import TrainfarmError


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
        return JSONResponse(body, status_code=exc.http_status)

    @app.exception_handler(redis.RedisError)
    async def _redis_error(_request: Request, exc: redis.RedisError) -> JSONResponse:
        # Redis restarting or unreachable: a temporary condition, not a bug; clients retry.
        body = {"error": "Unavailable", "message": f"Redis is unavailable: {exc}", "field": None}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            field = field_path(err.get("loc", ()))
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                message = "unknown field"
            details.append({"field": field, "message": message})
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        body = {
            "error": "InvalidRequest",
            "message": summary,
            "field": details[0]["field"],
            "details": details,
        }
        return JSONResponse(body, status_code=422)
