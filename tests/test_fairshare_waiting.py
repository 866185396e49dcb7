"""Fast tests of the waiting set, its load from a real SQLite database, node capacity and the
reasons a queued job shows (master/fairshare/waiting.py, capacity.py, view.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from master.db import init_db, make_engine
from master.fairshare.capacity import QueueCapacity, WorkerOffer, capacity_of
from master.fairshare.caps import CapBook, Caps
from master.fairshare.decide import decide_queue
from master.fairshare.preemption import PreemptionPolicy
from master.fairshare.view import AdmissionView
from master.fairshare.waiting import WaitingJob, WaitingSet, load_waiting
from master.models import Job, JobAttempt, Node, utcnow
from shared.status import JobStatus


def wj(
    job_id: int, owner: str = "a", attempt: int | None = None, not_before: float | None = None
) -> WaitingJob:
    return WaitingJob(job_id, attempt or job_id, owner, "cpu", 5, 1, not_before)


def test_put_remove_replace_and_backoff() -> None:
    ws = WaitingSet()
    ws.put(wj(1), 0.0)
    ws.put(wj(2, not_before=100.0), 0.0)
    assert len(ws) == 2 and ws.users("cpu") == {"a": [(-5, 1)]}
    assert ws.next_due() == 100.0
    ws.release_due(50.0)
    assert ws.users("cpu") == {"a": [(-5, 1)]}
    ws.release_due(100.0)
    assert ws.users("cpu") == {"a": [(-5, 1), (-5, 2)]} and ws.next_due() is None
    ws.put(wj(1, attempt=7), 0.0)  # a new attempt replaces the old entry
    assert ws.get(1) == wj(1, attempt=7) and ws.users("cpu")["a"] == [(-5, 1), (-5, 2)]
    assert ws.watermark == 7
    ws.remove(1)
    ws.remove(2)
    assert len(ws) == 0 and ws.queues() == []
    ws.replace([wj(3, "b")], 0.0)
    assert ws.users("cpu") == {"b": [(-5, 3)]}


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    init_db(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def add(
    session: Session, *, status: JobStatus = JobStatus.QUEUED, admitted: bool = False, attempts: int = 1
) -> tuple[int, int]:
    job = Job(queue="cpu", owner="a", spec={}, status=status, attempts=attempts)
    session.add(job)
    session.flush()
    assert job.id is not None
    last = 0
    for n in range(1, attempts + 1):
        att = JobAttempt(job_id=job.id, number=n, status=status, admitted_at=utcnow() if admitted else None)
        session.add(att)
        session.flush()
        assert att.id is not None
        last = att.id
    session.commit()
    return job.id, last


def test_load_waiting(session: Session) -> None:
    j1, a1 = add(session)
    add(session, admitted=True)
    add(session, status=JobStatus.CANCELLED)
    j4, a4 = add(session, attempts=2)  # only its current attempt counts
    assert sorted((w.job_id, w.attempt_id) for w in load_waiting(session)) == [(j1, a1), (j4, a4)]
    j5, a5 = add(session)
    assert [w.job_id for w in load_waiting(session, after=a4)] == [j5]
    assert sorted(w.job_id for w in load_waiting(session, after=a5, attempt_ids=[a1])) == [j1]


def node(name: str, info: dict[str, object], age: float = 0.0) -> Node:
    return Node(name=name, info=info, last_seen=utcnow() - timedelta(seconds=age))


def test_capacity_of() -> None:
    nodes = [
        node(
            "a",
            {
                "workers": [
                    {"worker": "a#1", "queues": ["cpu"], "concurrency": 2},
                    {
                        "worker": "a#2",
                        "queues": ["cpu", "gpu"],
                        "gpu_slots": [0, 1],
                    },  # concurrency missing -> 1
                    {"worker": "a#3", "queues": ["cpu"], "concurrency": 5, "paused": True},
                ]
            },
        ),
        node("b", {"worker": "b#1", "queues": ["cpu"], "concurrency": 4, "gpu_slots": [0]}, age=1000.0),
    ]
    cap = capacity_of(nodes, offline_after=60.0)
    assert (cap["cpu"].slots, cap["cpu"].gpus) == (3, 0)
    assert (cap["gpu"].slots, cap["gpu"].gpus) == (1, 2)
    assert [w.key for w in cap["cpu"].workers] == ["a#1", "a#2"]


def view_of(ws: WaitingSet, capacity: QueueCapacity, caps: CapBook, holdings=()) -> AdmissionView:  # type: ignore[no-untyped-def]
    d = decide_queue(capacity.queue, ws, list(holdings), capacity, caps, {}, PreemptionPolicy(False, 0), 0.0)
    for admitted in d.admit:  # the admitter takes admitted jobs out of the set
        ws.remove(admitted.job_id)
    ranks = {q: {u: list(r) for u, r in ws.users(q).items()} for q in ws.queues()}
    return AdmissionView(datetime.now(UTC), {capacity.queue: d}, ranks, ws.delayed_jobs(), {}, caps, 3600.0)


def jobrow(job_id: int, owner: str = "a", devices: int = 1, queue: str = "cpu") -> Job:
    return Job(id=job_id, queue=queue, owner=owner, spec={}, devices=devices)


def test_reasons() -> None:
    ws = WaitingSet()
    for i in (1, 2, 3):
        ws.put(wj(i), 0.0)
    ws.put(wj(9, not_before=datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC).timestamp()), 0.0)
    view = view_of(ws, QueueCapacity("cpu", 0, 0, []), CapBook(Caps(0, 0), {}))
    assert view.reason(jobrow(9)) == "waiting: retry backoff until 12:00:01 UTC"
    assert view.reason(jobrow(77)) == "waiting: admission has not looked at it yet"
    assert view.reason(jobrow(1)).startswith("waiting: no worker online")
    view = view_of(ws, QueueCapacity("cpu", 1, 0, [WorkerOffer("n#1", 1, 0)]), CapBook(Caps(0, 0), {}))
    assert view.reason(jobrow(2)) == "waiting: no free worker slot on cpu (1 in use)"
    assert view.reason(jobrow(3)) == "waiting: no free worker slot on cpu (1 in use); 1 job ahead"
    queues, users = view.shares()
    assert [(q.queue, q.slots, q.used_slots, q.waiting) for q in queues] == [("cpu", 1, 1, 3)]
    assert [(u.user, u.position, u.queued) for u in users] == [("a", 0, 3)]
    gws = WaitingSet()
    gws.put(WaitingJob(1, 1, "a", "gpu", 5, 3, None), 0.0)
    gws.put(WaitingJob(2, 2, "b", "gpu", 5, 1, None), 0.0)
    g = view_of(gws, QueueCapacity("gpu", 2, 2, [WorkerOffer("g#1", 2, 2)]), CapBook(Caps(2, 0), {}))
    assert g.reason(jobrow(1, "a", 3, "gpu")) == "waiting: a already uses 0 of their 2 GPUs on gpu"
