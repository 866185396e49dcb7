"""Worker identity: several workers on one machine under one node name, each its own worker.

Stopping one never drains, sweeps or hides another; a draining worker returns what reaches it
unstarted, and a pool child drained by a SIGTERM of its own takes jobs again afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlmodel import Session, select

from master.db import init_db, make_engine
from master.models import Node
from master.nodes import merge_beats, sync_nodes
from shared.settings import Settings
from shared.streams import NODES_KEY, node_attempts_key, split_worker_key
from tests.conftest import wait_for, wait_status
from trainfarm import render
from trainfarm.services.farm import WorkerProcess
from worker import draining, identity

PY = sys.executable
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_each_process_gets_its_own_identity_under_the_node_name():
    first, second = identity.establish("gpu-box"), identity.establish("gpu-box")
    assert first.node == second.node == "gpu-box" and first.instance != second.instance
    assert first.key != second.key and identity.current() == second
    assert split_worker_key(first.key) == ("gpu-box", first.instance)
    # A node name set by hand may hold the separator; a bare name (an older worker's beat) has none.
    assert split_worker_key("lab#3#ab12cd34") == ("lab#3", "ab12cd34")
    assert split_worker_key("plain") == ("plain", None)


def test_a_nodes_workers_merge_into_one_row_each_keeping_its_own_part():
    gpu = {
        "name": "box", "worker": "box#a", "instance": "a", "pid": 10, "ts": 100.0, "queues": ["gpu"],
        "pool": "prefork", "concurrency": 2, "gpu_slots": [0, 1], "cpu_count": 16,
        "running": [{"job_id": 7, "attempt": 1}], "paused": None,
    }  # fmt: skip
    cpu = {
        "name": "box", "worker": "box#b", "instance": "b", "pid": 11, "ts": 101.0, "queues": ["cpu"],
        "pool": "threads", "concurrency": 1, "gpu_slots": [0, 1], "cpu_count": 16,
        "running": [{"job_id": 3, "attempt": 2}], "paused": "disk low: 10 MiB free on /w, needs 32 MiB",
    }  # fmt: skip
    merged = merge_beats([gpu, cpu])
    assert (merged["queues"], merged["gpu_slots"], merged["cpu_count"]) == (["cpu", "gpu"], [0, 1], 16)
    assert merged["running"] == [{"job_id": 3, "attempt": 2}, {"job_id": 7, "attempt": 1}]
    assert (merged["pool"], merged["concurrency"], merged["ts"]) == ("mixed", 3, 101.0)
    # One worker still takes jobs, so the node does; the paused one says why in its own part.
    assert merged["paused"] is None
    assert [(w["worker"], w["paused"]) for w in merged["workers"]] == [
        ("box#a", None),
        ("box#b", cpu["paused"]),
    ]
    both_paused = merge_beats([{**gpu, "paused": "draining: this worker is shutting down"}, cpu])
    assert both_paused["paused"] == f"draining: this worker is shutting down; {cpu['paused']}"

    node = {"name": "box", "online": True, "queues": merged["queues"], "info": both_paused, "last_seen": None}
    out = render.console()
    with out.capture() as captured:
        out.print(render.nodes_table([node]))
    row = " ".join(captured.get().split())
    assert "paused: draining" in row and "prefork x2 + threads x1" in row


def test_a_pool_childs_own_sigterm_drains_its_attempt_not_the_child_for_good(monkeypatch):
    monkeypatch.setattr(draining, "_pool_child", True)
    monkeypatch.setattr(draining, "_requested", type(draining._requested)())
    draining.request()
    draining.settle(worker_draining=True)  # the worker stops as well: the child stays drained
    assert draining.requested()
    draining.settle(worker_draining=False)  # only the child was signalled: it takes jobs again
    assert not draining.requested()
    # In the main process (solo, threads) the flag is the worker's own shutdown: it stays.
    monkeypatch.setattr(draining, "_pool_child", False)
    draining.request()
    draining.settle(worker_draining=False)
    assert draining.requested()


@pytest.fixture
def same_name_workers(settings: Settings, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Two workers as an operator starts them on one machine with default settings: the same node
    name (the hostname) and the same data, work and cache dirs; only their log files differ."""
    name = socket.gethostname()
    workers = [WorkerProcess(tmp_path / f"w{i}", settings, queues="cpu", node_name=name) for i in (1, 2)]
    try:
        for proc in workers:
            proc.start()
        yield workers
    finally:
        for proc in workers:
            proc.stop()


def _node(api: httpx.Client) -> dict | None:
    nodes = api.get("/nodes").json()
    return nodes[0] if len(nodes) == 1 and nodes[0]["online"] else None


#: A job that holds its worker's shutdown open: it ignores SIGTERM, so the drain waits out the
#: cancel grace period (5 s in the tests) before it kills the job.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"


@SQLITE
def test_stopping_one_of_two_workers_on_a_node_leaves_the_other_running_every_job_once(
    api, same_name_workers
):
    def two_workers() -> dict | None:
        node = _node(api)
        return node if node and len(node["info"].get("workers", [])) == 2 else None

    node: dict = wait_for(two_workers, timeout=30, what="one node with two workers")  # type: ignore[assignment]
    assert node["name"] == socket.gethostname()
    keys = [w["worker"] for w in node["info"]["workers"]]
    assert len(set(keys)) == 2 and all(split_worker_key(k)[0] == node["name"] for k in keys)

    stubborn = api.post("/jobs", json={"command": [PY, "-c", STUBBORN], "queue": "cpu"}).json()["id"]

    def runner() -> int | None:
        node = _node(api)
        for part in (node or {}).get("info", {}).get("workers", []):
            if any(r["job_id"] == stubborn for r in part["running"]):
                return part["pid"]
        return None

    busy_pid = wait_for(runner, timeout=60, what="the stubborn job running on one of the workers")
    [busy] = [w for w in same_name_workers if w.pid == busy_pid]
    # SIGTERM to its main process, as `kill` or a deploy does: a warm shutdown that drains the
    # stubborn job, for seconds, while the other worker on the same node takes the next jobs.
    os.kill(busy.pid, signal.SIGTERM)
    jobs = [
        api.post("/jobs", json={"command": [PY, "-c", f"print('job {i}')"], "queue": "cpu"}).json()["id"]
        for i in range(5)
    ]
    for job_id in jobs:
        job = wait_status(api, job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
        assert (job["status"], job["attempts"], job["handbacks"]) == ("succeeded", 1, 0), job
    # The survivor never took the other's shutdown for its own: it neither paused nor returned jobs.
    [survivor] = [w for w in same_name_workers if w is not busy]
    said = survivor.log_path.read_text(errors="replace")
    assert "not taking new jobs" not in said and "back on the queue unstarted" not in said
    # The stopped worker handed its own job back, once; the survivor runs it now.
    job = wait_for(
        lambda: (
            (j := api.get(f"/jobs/{stubborn}").json())["attempts"] == 2 and j["status"] == "running" and j
        ),
        timeout=60,
        what="the stubborn job handed back and running again",
    )
    assert job["handbacks"] == 1  # type: ignore[index]
    api.post(f"/jobs/{stubborn}/cancel")
    wait_status(api, stubborn, {"cancelled"}, timeout=60)


@SQLITE
def test_a_draining_pool_child_returns_a_task_unstarted_then_takes_jobs_again(api, start_worker):
    worker = start_worker("node-1", queues="cpu", pool="prefork", concurrency=1)
    # The job's parent is the pool child that runs it.
    first = api.post(
        "/jobs", json={"command": [PY, "-c", "import os; print('child', os.getppid())"], "queue": "cpu"}
    )
    job = wait_status(api, first.json()["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded"
    lines = api.get(f"/jobs/{job['id']}/logs").json()["lines"]
    [child] = [int(line["text"].split()[1]) for line in lines if line["text"].startswith("child ")]
    assert child != worker.pid

    os.kill(child, signal.SIGTERM)  # the child alone, not its worker: it drains

    def returned() -> bool:
        return "back on the queue unstarted" in worker.log_path.read_text(errors="replace")

    second = api.post("/jobs", json={"command": [PY, "-c", "print('ran once')"], "queue": "cpu"}).json()
    job = wait_status(api, second["id"], {"succeeded", "failed"})
    # It reached the draining child, went back without a lease, an attempt or a hand-back, and ran
    # at the next delivery, in the same child, which takes jobs again.
    assert returned()
    assert (job["status"], job["attempts"], job["handbacks"]) == ("succeeded", 1, 0), job
    assert [a["status"] for a in api.get(f"/jobs/{second['id']}").json()["attempt_list"]] == ["succeeded"]
    assert _pid_alive(child)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_sync_merges_a_nodes_workers_and_drops_the_long_silent(redis_server, tmp_path):
    broker = redis.Redis.from_url(redis_server.url)
    broker.flushdb()
    engine = make_engine(f"sqlite:///{tmp_path / 'nodes.db'}")
    init_db(engine)
    seconds, micros = broker.time()
    now = seconds + micros / 1e6

    def beat(key: str, ts: float, queue: str) -> None:
        node, instance = split_worker_key(key)
        info = {"name": node, "worker": key, "instance": instance, "ts": ts, "queues": [queue]}
        broker.hset(NODES_KEY, key, json.dumps(info))

    beat("box#a", now, "gpu")
    beat("box#b", now - 1, "cpu")
    beat("box#c", now - 60, "slow")  # killed a minute ago: silent far longer than its siblings
    beat("box#d", now - 2 * 24 * 3600, "old")  # killed days ago: forgotten
    broker.hset(node_attempts_key("box#d"), "1-1", "{}")
    assert sync_nodes(broker, engine, offline_after=6.0) == 4
    with Session(engine) as session:
        [row] = session.exec(select(Node)).all()
    assert (row.name, row.queues) == ("box", ["cpu", "gpu"])
    assert [w["worker"] for w in row.info["workers"]] == ["box#b", "box#a"]
    assert sorted(k.decode() for k in broker.hkeys(NODES_KEY)) == ["box#a", "box#b", "box#c"]
    assert not broker.exists(node_attempts_key("box#d"))
