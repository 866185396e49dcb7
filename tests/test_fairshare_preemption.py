"""Fast tests of victim choice (master/fairshare/preemption.py): the fewest, newest first."""

from __future__ import annotations

from master.fairshare.holdings import Holding
from master.fairshare.preemption import PreemptionPolicy, choose_victims, eligible


def h(job_id: int, devices: int, started: float, priority: int = 1) -> Holding:
    return Holding(job_id, 1, "x", "gpu", priority, devices, started, None, True, None, False)


def ids(chosen: list[Holding] | None) -> list[int] | None:
    return None if chosen is None else [c.job_id for c in chosen]


def test_nothing_needed() -> None:
    assert choose_victims([h(1, 1, 1.0)], 0, 0) == []


def test_impossible() -> None:
    assert choose_victims([h(1, 1, 1.0), h(2, 1, 2.0)], 1, 3) is None
    assert choose_victims([], 1, 0) is None


def test_newest_first_among_equals() -> None:
    assert ids(choose_victims([h(1, 1, 1.0), h(2, 1, 2.0), h(3, 1, 3.0)], 1, 1)) == [3]
    assert ids(choose_victims([h(1, 1, 1.0), h(2, 1, 2.0), h(3, 1, 3.0)], 2, 2)) == [3, 2]


def test_fewest_beats_newest() -> None:
    # Newest alone (1 GPU) is too small for 4; the minimum is two: newest + the older 3-GPU one.
    cands = [h(1, 3, 1.0), h(2, 2, 2.0), h(3, 1, 3.0)]
    assert ids(choose_victims(cands, 1, 4)) == [3, 1]
    # One big job suffices where the newest small one would need company.
    assert ids(choose_victims([h(1, 4, 1.0), h(2, 1, 2.0)], 1, 4)) == [1]


def test_eligible() -> None:
    policy = PreemptionPolicy(True, 600)
    base = h(1, 1, 10.0, priority=3)
    assert eligible(base, 5, 1000.0, policy)
    assert not eligible(base, 3, 1000.0, policy)
    recent = Holding(1, 1, "x", "gpu", 3, 1, 10.0, None, True, 900.0, False)
    assert not eligible(recent, 5, 1000.0, policy)
