"""Fast tests of decayed usage (master/fairshare/usage.py): the closed form against a numerical
integral and hand values, and the meter's stored rows against the formula, in a real SQLite file."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from master.db import init_db, make_engine
from master.fairshare.usage import Running, UsageMeter, decayed, held

HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY


def midpoint(
    devices: int, start: float, end: float, at: float, half_life: float, steps: int = 10_000
) -> float:
    width = (end - start) / steps
    return sum(
        devices * 2.0 ** (-(at - (start + (i + 0.5) * width)) / half_life) * width for i in range(steps)
    )


@pytest.mark.parametrize(
    ("devices", "start", "end", "at"),
    [(1, 0.0, HOUR, HOUR), (4, 0.0, 3 * DAY, 10 * DAY), (2, 5 * DAY, 5 * DAY + 600, 20 * DAY)],
)
def test_held_matches_a_numerical_integral(devices: int, start: float, end: float, at: float) -> None:
    assert held(devices, start, end, at, WEEK) == pytest.approx(
        midpoint(devices, start, end, at, WEEK), rel=1e-7
    )


def test_held_hand_values() -> None:
    # One device for one half-life, seen at its end: the integral of 2^-x/H over [0, H] = H/(2 ln 2).
    assert held(1, 0.0, WEEK, WEEK, WEEK) == pytest.approx(WEEK / (2 * math.log(2)), rel=1e-12)
    # Seen one half-life later it counts half.
    assert held(1, 0.0, WEEK, 2 * WEEK, WEEK) == pytest.approx(WEEK / (4 * math.log(2)), rel=1e-12)
    # Devices multiply; nothing held for no time.
    assert held(3, 0.0, WEEK, WEEK, WEEK) == pytest.approx(3 * WEEK / (2 * math.log(2)), rel=1e-12)
    assert held(2, 100.0, 100.0, 200.0, WEEK) == 0.0


def test_decayed_halves_per_half_life() -> None:
    assert decayed(8.0, 0.0, WEEK) == 8.0
    assert decayed(8.0, WEEK, WEEK) == pytest.approx(4.0)
    assert decayed(8.0, 3 * WEEK, WEEK) == pytest.approx(1.0)
    assert decayed(8.0, -DAY, WEEK) == 8.0  # a clock step back never grows usage


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'usage.db'}")
    init_db(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ts(offset: float) -> datetime:
    return T0 + timedelta(seconds=offset)


@pytest.mark.parametrize("in_order", [True, False])
def test_charge_twice_then_read_is_the_sum_of_the_formula(session: Session, in_order: bool) -> None:
    meter = UsageMeter(WEEK)
    first = (2, 0.0, 5 * HOUR)
    second = (1, DAY, DAY + 3 * HOUR)
    attempts = [first, second] if in_order else [second, first]
    for devices, start, end in attempts:
        meter.charge(session, "alice", "gpu", devices, ts(start), ts(end))
    session.commit()
    now = 10 * DAY
    expected = sum(held(d, s, e, now, WEEK) for d, s, e in (first, second))
    usage = meter.read(session, [], now=T0.timestamp() + now)
    assert usage == {("alice", "gpu"): pytest.approx(expected, rel=1e-9)}


def test_read_adds_running_attempts_and_keeps_users_and_queues_apart(session: Session) -> None:
    meter = UsageMeter(WEEK)
    meter.charge(session, None, "cpu", 1, ts(0.0), ts(HOUR))
    session.commit()
    now = T0.timestamp() + DAY
    running = [Running("bob", "gpu", 2, T0.timestamp() + 12 * HOUR), Running("", "cpu", 1, now - HOUR)]
    usage = meter.read(session, running, now=now)
    assert usage == {
        ("", "cpu"): pytest.approx(held(1, 0.0, HOUR, DAY, WEEK) + held(1, DAY - HOUR, DAY, DAY, WEEK)),
        ("bob", "gpu"): pytest.approx(held(2, 12 * HOUR, DAY, DAY, WEEK)),
    }


def test_decay_ordering_computed_exactly(session: Session) -> None:
    """10 device-hours ended 14 days ago weigh less than 3 device-hours ended yesterday."""
    meter = UsageMeter(WEEK)
    now = 30 * DAY
    old = (now - 14 * DAY - 10 * HOUR, now - 14 * DAY)
    recent = (now - DAY - 3 * HOUR, now - DAY)
    meter.charge(session, "old", "gpu", 1, ts(old[0]), ts(old[1]))
    meter.charge(session, "recent", "gpu", 1, ts(recent[0]), ts(recent[1]))
    session.commit()
    usage = meter.read(session, [], now=T0.timestamp() + now)
    scale = WEEK / math.log(2)
    want_old = scale * (2.0**-2 - 2.0 ** (-(14 * DAY + 10 * HOUR) / WEEK))
    want_recent = scale * (2.0 ** (-1 / 7) - 2.0 ** (-(DAY + 3 * HOUR) / WEEK))
    assert usage[("old", "gpu")] == pytest.approx(want_old, rel=1e-9)
    assert usage[("recent", "gpu")] == pytest.approx(want_recent, rel=1e-9)
    # In device-hours: 2.4491 against 2.7004, so "old" goes first.
    assert usage[("old", "gpu")] / HOUR == pytest.approx(2.4491, abs=1e-4)
    assert usage[("recent", "gpu")] / HOUR == pytest.approx(2.7004, abs=1e-4)
    assert min(usage, key=usage.__getitem__) == ("old", "gpu")
