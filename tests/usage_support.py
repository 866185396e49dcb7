"""The master's app with the usage route (master/api/usage.py), for tests that read resource use
before master/app.py registers the route itself; once it does, this changes nothing."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from master.api import usage
from master.api.deps import get_caller

USAGE_PATH = "/api/jobs/{job_id}/usage"


def with_usage_route(app: FastAPI) -> FastAPI:
    if not any(getattr(route, "path", "") == USAGE_PATH for route in app.routes):
        app.include_router(usage.router, prefix="/api", dependencies=[Depends(get_caller)])
    return app
