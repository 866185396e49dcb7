"""The ASGI middleware that times each API request by route (trainfarm_http_request_seconds)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from master.metrics.counters import HTTP_LATENCY


class RequestTimer:
    """Observes each request's latency by route, up to the start of its response.

    Plain ASGI on purpose: Starlette's `@app.middleware("http")` costs a task and a memory stream per
    request, about a fifth of a job submission's time on a 2-core machine (bench/submit.py).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            # The router has put the matched route into this same scope by the time we are answered.
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_LATENCY.labels(scope["method"], route, str(status)).observe(time.perf_counter() - start)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not observed:  # an unhandled error: the server answers 500
                observe(500)
