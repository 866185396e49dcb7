"""Health route: can the master reach its database, Redis and S3?"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from master.api.deps import StateDep
from master.state import MasterState

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


def _ping_database(state: MasterState) -> None:
    with state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check(state: MasterState) -> dict[str, str]:
    checks: dict[str, str] = {}
    probes: dict[str, Callable[[], object]] = {
        "database": lambda: _ping_database(state),
        "redis": state.broker.ping,
        "s3": state.store.ensure_bucket,
    }
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # reported, not raised: health must answer when parts are down
            # Anyone may ask, so the answer names the failure only; its words (host names, users,
            # the statement that failed) go to the master's log.
            log.warning("health check of %s failed: %s: %s", name, exc.__class__.__name__, exc)
            checks[name] = f"error: {exc.__class__.__name__}"
    return checks


@router.get("/health", responses={503: {"description": "A dependency does not answer; it is named"}})
async def health(state: StateDep) -> JSONResponse:
    """`ok` with 200 when every dependency answers, else 503 naming the one that does not."""
    checks = await run_in_threadpool(_check, state)
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", **checks}, status_code=200 if healthy else 503
    )
