"""The master's FastAPI application: `uvicorn master.app:create_app --factory`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from tenacity import retry, stop_after_delay, wait_exponential

from master.api import (
    artifacts,
    audit,
    auth,
    code,
    compare,
    datasets,
    errors,
    fairshare,
    health,
    jobs,
    limits,
    logs,
    nodes,
    reruns,
    sweeps,
    tokens,
    usage,
    users,
    webhooks,
)
from master.api.deps import get_caller
from master.background import start_loops
from master.db import init_db, make_engine
from master.events import EventConsumer
from master.job_usage import IdleRule
from master.lifecycle import RetryPolicy
from master.metrics import RequestTimer, make_registry, register_log_hub
from master.reaper import LeaseReaper
from master.security_headers import SecurityHeaders
from master.state import MasterState
from shared.errors import Unauthorized
from shared.leases import Leases
from shared.redaction import redact_url
from shared.settings import Settings, get_settings
from shared.streams import EventBus, LogStream

log = logging.getLogger("trainfarm.master")
STATIC = Path(__file__).parent / "static"
#: Seconds a thread holds the GIL before another waiting for it gets a turn (see the lifespan).
ADMISSION_SWITCH_INTERVAL = 0.0005


@retry(stop=stop_after_delay(60), wait=wait_exponential(max=5), reraise=True)
def _ensure_bucket(state: MasterState) -> None:
    # S3 may still be starting next to us (docker-compose, standalone); give it a minute.
    state.store.ensure_bucket()


#: Seconds each asynchronous part gets to stop at shutdown.
STOP_TIMEOUT = 5.0


async def _bounded(step: Awaitable[object], what: str) -> None:
    """Await one shutdown step for at most STOP_TIMEOUT: a Redis connection left stuck by a
    cancelled read must not keep the master from exiting (seen once in a test farm's teardown)."""
    try:
        await asyncio.wait_for(step, STOP_TIMEOUT)
    except TimeoutError:
        log.warning("%s did not stop within %.0fs; shutting down without waiting for it", what, STOP_TIMEOUT)


def _host_patterns(hosts: list[str]) -> list[str]:
    # An IPv6 host may be written with or without its brackets; accept both spellings.
    return sorted({h.lower() for h in hosts} | {h.lower().strip("[]") for h in hosts})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_master()  # production: no open routes, no unsigned sessions, no wildcard hosts

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        init_db(engine)
        state = MasterState.connect(settings, engine)
        _ensure_bucket(state)
        app.state.master = state
        app.state.registry = make_registry(engine, state.broker, settings)
        register_log_hub(app.state.registry, state.hub)
        await state.hub.start()
        # Access changes announced by any master empty this one's token cache; this master's
        # request counts go to Redis every tenth of a second.
        auth_tasks = [
            asyncio.create_task(state.auth.watch()),
            asyncio.create_task(state.auth.limits.mutations.run()),
        ]
        policy = RetryPolicy(max_handbacks=settings.max_handbacks)
        consumer = EventConsumer(
            EventBus(state.broker),
            engine,
            policy=policy,
            meter=state.meter,
            on_ended=state.admitter.wake,
            idle=IdleRule.of(settings),
            broker=state.broker,
        )
        reaper = LeaseReaper(
            engine,
            Leases(state.broker, settings.lease_ttl),
            LogStream(state.broker, settings.log_stream_maxlen),
            grace=settings.lease_grace or 0.0,
            meter=state.meter,
        )
        # The admitter thread (which decides whenever a request could not: a decision was under
        # way, a slot came free) works through many short waits on SQLite and Redis, each of which
        # must win the GIL back from the request threads: with Python's default 5 ms switch
        # interval that cost a dispatch 25 ms at p50 on an idle farm, 16 ms with 0.5 ms
        # (bench/dispatch.py, measured before submissions were decided in their own requests).
        sys.setswitchinterval(ADMISSION_SWITCH_INTERVAL)
        state.admitter.start()
        loops = start_loops(consumer, reaper, state, engine)
        log.info(
            "master ready: database %s, redis %s",
            engine.url.render_as_string(hide_password=True),
            redact_url(settings.redis_url),
        )
        try:
            yield
        finally:
            for loop in loops:
                loop.stop()
            state.admitter.stop()
            for task in auth_tasks:
                task.cancel()
            await _bounded(asyncio.gather(*auth_tasks, return_exceptions=True), "the access watchers")
            try:
                state.dispatcher.marks.flush()  # what the loop had not written yet
            except Exception:  # the sweep publishes those again; leases keep it to one run
                log.exception("could not record the last published attempts")
            # Open live-log streams close; their clients reconnect.
            await _bounded(state.hub.stop(), "the live-log hub")
            await _bounded(state.aredis.aclose(), "the Redis client")
            state.broker.close()
            engine.dispose()

    app = FastAPI(
        title="trainfarm",
        description="Submit training jobs, watch them live, get the models back.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    # Every route of these needs a token or a session (a test walks the OpenAPI schema to hold us
    # to it); the login routes and /api/health are the only ones open.
    signed_in = [Depends(get_caller)]
    routers = (
        *(jobs, reruns, compare, sweeps, webhooks, logs, artifacts, datasets, code, nodes, usage),
        *(tokens, users, limits, fairshare, audit),
    )
    for module in routers:
        app.include_router(module.router, prefix="/api", dependencies=signed_in)
    app.include_router(auth.router, prefix="/api")
    app.include_router(health.router, prefix="/api")

    # Outermost first: the host check answers before anything else runs.
    app.add_middleware(RequestTimer)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=_host_patterns(settings.allowed_hosts))

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        state: MasterState = request.app.state.master
        if settings.auth_enabled and not state.auth.is_scraper(request):
            caller = await get_caller(request, state, None)
            if not caller.is_admin:
                raise Unauthorized("/metrics takes the scrape token (TRAINFARM_METRICS_TOKEN) or an admin's")
        # In the thread pool: the collectors read the database.
        body = await run_in_threadpool(generate_latest, request.app.state.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
