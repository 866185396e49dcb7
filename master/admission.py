"""Admission of submissions: refused with 503 and Retry-After while Redis is nearly full.

Redis holds the queue, the events and the leases as well as live logs, and runs with `maxmemory`
and `noeviction`, so at its limit every write fails. Submissions stop first, at
`admission_redis_memory_fraction` of the limit, well before Redis would refuse anything; running
jobs keep going (their live logs are bounded and stop at a higher share, see worker/logpump.py).
"""

from __future__ import annotations

from fastapi import Depends, Request

from master.state import MasterState
from shared.errors import RetryableError
from shared.redis_memory import AsyncMemoryGauge


class FarmFull(RetryableError):
    """Answered 503 with Retry-After by the one error handler."""


def _gauge(request: Request, state: MasterState) -> AsyncMemoryGauge:
    # One per app, made on first use: the gauge keeps its last reading for a second.
    gauge = getattr(request.app.state, "redis_memory", None)
    if gauge is None:
        gauge = request.app.state.redis_memory = AsyncMemoryGauge(state.aredis)
    return gauge


async def admit(request: Request) -> None:
    """Refuse a submission while Redis's used memory is above the admission share of maxmemory."""
    state: MasterState = request.app.state.master
    reading = await _gauge(request, state).read()
    if reading.above(state.settings.admission_redis_memory_fraction):
        raise FarmFull(
            f"the farm is full for now: Redis holds {reading.describe()} "
            "(queue and live logs); submit again in a moment"
        )


#: `dependencies=[Admission]` on a submission route.
Admission = Depends(admit)
