"""Fast tests of the pure admission decision (master/fairshare/decide.py)."""

from __future__ import annotations

from master.fairshare.capacity import QueueCapacity, WorkerOffer
from master.fairshare.caps import CapBook, Caps
from master.fairshare.decide import Short, decide_queue
from master.fairshare.holdings import Holding
from master.fairshare.preemption import PreemptionPolicy
from master.fairshare.waiting import WaitingJob, WaitingSet

OFF = PreemptionPolicy(enabled=False, grace=600)
NO_CAPS = CapBook(Caps(0, 0), {})


def waiting(*jobs: WaitingJob) -> WaitingSet:
    ws = WaitingSet()
    for j in jobs:
        ws.put(j, 0.0)
    return ws


def job(job_id: int, owner: str, priority: int = 5, devices: int = 1, queue: str = "cpu") -> WaitingJob:
    return WaitingJob(job_id, job_id, owner, queue, priority, devices)


def holding(
    job_id: int,
    owner: str,
    devices: int = 1,
    priority: int = 5,
    started: float | None = 1.0,
    worker: str | None = None,
    preemptible: bool = True,
    preempting: bool = False,
    queue: str = "cpu",
) -> Holding:
    return Holding(job_id, 1, owner, queue, priority, devices, started, worker, preemptible, None, preempting)


def cpu(slots: int) -> QueueCapacity:
    return QueueCapacity("cpu", slots, 0, [WorkerOffer("n#1", slots, 0)] if slots else [])


def gpu(*per_worker: int) -> QueueCapacity:
    workers = [WorkerOffer(f"n{i}#1", g, g) for i, g in enumerate(per_worker)]
    return QueueCapacity("gpu", sum(w.slots for w in workers), sum(per_worker), workers)


def ids(jobs: list[WaitingJob] | list[Holding]) -> list[int]:
    return [j.job_id for j in jobs]


def test_priority_first_then_least_usage() -> None:
    ws = waiting(job(1, "heavy", 5), job(2, "light", 5), job(3, "heavy", 9))
    d = decide_queue("cpu", ws, [], cpu(3), NO_CAPS, {("heavy", "cpu"): 100.0}, OFF, 0.0)
    assert ids(d.admit) == [3, 2, 1]


def test_one_job_user_goes_before_third_job_of_thirty_job_user() -> None:
    ws = waiting(*[job(i, "many") for i in range(1, 31)], job(100, "one"))
    # The first of the 30 ran (it holds a slot and has usage); two slots free.
    usage = {("many", "cpu"): 50.0}
    d = decide_queue("cpu", ws, [holding(900, "many")], cpu(3), NO_CAPS, usage, OFF, 0.0)
    assert ids(d.admit) == [100, 1]
    assert d.stop is not None and d.stop.job.job_id == 2 and d.stop.short == Short.SLOTS


def test_ties_at_zero_usage_take_turns() -> None:
    ws = waiting(job(1, "a"), job(2, "a"), job(3, "b"), job(4, "b"))
    d = decide_queue("cpu", ws, [], cpu(4), NO_CAPS, {}, OFF, 0.0)
    assert ids(d.admit) == [1, 3, 2, 4]


def test_capped_user_drops_out_and_others_go_on() -> None:
    caps = CapBook(Caps(2, 0), {})
    ws = waiting(job(1, "a", devices=1), job(2, "a", devices=1), job(3, "b"))
    d = decide_queue("cpu", ws, [holding(9, "a")], cpu(5), caps, {}, OFF, 0.0)
    assert ids(d.admit) == [3, 1]
    assert d.capped == {"a": (2, 2)}


def test_slot_and_gpu_capacity() -> None:
    d = decide_queue("cpu", waiting(job(1, "a"), job(2, "b")), [], cpu(1), NO_CAPS, {}, OFF, 0.0)
    assert ids(d.admit) == [1] and d.stop is not None and d.stop.short == Short.SLOTS
    ws = waiting(job(1, "a", devices=2, queue="gpu"), job(2, "b", devices=2, queue="gpu"))
    d = decide_queue("gpu", ws, [], gpu(3), NO_CAPS, {}, OFF, 0.0)
    assert ids(d.admit) == [1]
    assert d.stop is not None and d.stop.short == Short.DEVICES and d.stop.free_devices == 1


def test_big_job_stops_the_queue() -> None:
    ws = waiting(job(1, "a", devices=4, queue="gpu"), job(2, "b", devices=1, queue="gpu"))
    d = decide_queue("gpu", ws, [], gpu(2), NO_CAPS, {("b", "gpu"): 1.0}, OFF, 0.0)
    assert d.admit == []
    assert d.stop is not None and d.stop.job.job_id == 1 and d.stop.short == Short.DEVICES


def test_block_when_free_gpus_are_split_across_workers() -> None:
    ws = waiting(job(1, "a", devices=2, queue="gpu"))
    d = decide_queue("gpu", ws, [], gpu(1, 1), NO_CAPS, {}, OFF, 0.0)
    assert d.admit == [] and d.stop is not None
    assert (d.stop.short, d.stop.free_devices, d.stop.free_block) == (Short.BLOCK, 2, 1)


def test_no_workers() -> None:
    d = decide_queue("cpu", waiting(job(1, "a")), [], cpu(0), NO_CAPS, {}, OFF, 0.0)
    assert d.admit == [] and d.stop is not None and d.stop.short == Short.WORKERS


def test_holdings_in_flight_count() -> None:
    d = decide_queue(
        "cpu", waiting(job(1, "a")), [holding(9, "b", started=None)], cpu(1), NO_CAPS, {}, OFF, 0.0
    )
    assert d.admit == [] and d.used_slots == 1 and d.held == {"b": 1}


def test_preemption_picks_only_eligible_victims() -> None:
    on = PreemptionPolicy(enabled=True, grace=600)
    hs = [
        holding(10, "x", priority=9, started=10.0),  # not lower priority
        holding(11, "x", priority=1, started=20.0, preemptible=False),
        holding(12, "x", priority=1, started=None),  # its message is on its way
        holding(13, "x", priority=1, started=40.0),
    ]
    d = decide_queue("cpu", waiting(job(1, "a", priority=8)), hs, cpu(4), NO_CAPS, {}, on, 1000.0)
    assert ids(d.preempt) == [13]


def test_jobs_already_leaving_are_counted() -> None:
    on = PreemptionPolicy(enabled=True, grace=600)
    hs = [
        holding(10, "x", priority=1, started=10.0, preempting=True),
        holding(11, "x", priority=1, started=20.0),
    ]
    d = decide_queue("cpu", waiting(job(1, "a", priority=8)), hs, cpu(2), NO_CAPS, {}, on, 1000.0)
    assert d.preempt == [] and d.leaving == 1
