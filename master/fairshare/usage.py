"""Usage: device-seconds a user's jobs held on a queue, decayed with a half-life.

An attempt holding `d` devices from `s` to `e` adds, seen at a later time `T`, the integral of
`d * 2**(-(T - t) / H)` over `t` in `[s, e]`: every second of use decays from the moment it was
used, so a week-old hour counts half an hour (H = 7 days), and nothing needs rewriting as time
passes. Ended attempts are folded into one stored number per user and queue (its value at `at`);
running attempts are added from their start each time usage is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, select

from master.models import UserUsage, as_utc, utcnow


def decayed(value: float, elapsed: float, half_life: float) -> float:
    """`value` as it counts `elapsed` seconds later."""
    return value * 2.0 ** (-max(elapsed, 0.0) / half_life)


def held(devices: int, start: float, end: float, at: float, half_life: float) -> float:
    """Decayed device-seconds, seen at `at`, of `devices` held from `start` to `end` (Unix seconds;
    `at` >= `end`). Exact: H/ln 2 * (2^-(at-end)/H - 2^-(at-start)/H) per device."""
    start = min(start, end)
    scale = half_life / math.log(2.0)
    return devices * scale * (2.0 ** (-(at - end) / half_life) - 2.0 ** (-(at - start) / half_life))


@dataclass(frozen=True)
class Running:
    """Devices held since `started` (Unix seconds), by one attempt that has not ended."""

    owner: str
    queue: str
    devices: int
    started: float


def owner_key(owner: str | None) -> str:
    """Jobs from before there were users count as one user, ""."""
    return owner or ""


class UsageMeter:
    """Charges ended attempts to their user's stored usage, and reads everyone's usage now."""

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life

    def charge(
        self,
        session: Session,
        owner: str | None,
        queue: str,
        devices: int,
        started: datetime,
        ended: datetime,
    ) -> None:
        """Fold one ended attempt into its user's row (inside the caller's transaction)."""
        row = session.get(UserUsage, (owner_key(owner), queue))
        start, end = as_utc(started).timestamp(), as_utc(ended).timestamp()
        if row is None:
            row = UserUsage(user=owner_key(owner), queue=queue, value=0.0, at=as_utc(ended))
        at = max(as_utc(row.at).timestamp(), end)
        row.value = decayed(row.value, at - as_utc(row.at).timestamp(), self.half_life) + held(
            devices, start, end, at, self.half_life
        )
        row.at = datetime.fromtimestamp(at, as_utc(ended).tzinfo)
        session.add(row)

    def read(
        self, session: Session, running: Iterable[Running], now: float | None = None
    ) -> dict[tuple[str, str], float]:
        """Every user's usage per queue at `now`: stored rows decayed to now, plus running attempts."""
        now = utcnow().timestamp() if now is None else now
        usage: dict[tuple[str, str], float] = {}
        for row in session.exec(select(UserUsage)):
            usage[(row.user, row.queue)] = decayed(
                row.value, now - as_utc(row.at).timestamp(), self.half_life
            )
        for r in running:
            key = (r.owner, r.queue)
            usage[key] = usage.get(key, 0.0) + held(r.devices, r.started, now, now, self.half_life)
        return usage
