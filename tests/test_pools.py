"""The pools a Windows worker runs with (`-P solo`, `-P threads`), exercised here on real workers: jobs
run, cancel kills the whole process tree, and a warm shutdown hands the running job back."""

from __future__ import annotations

import signal
import sys
import textwrap
import time

import psutil
import pytest

from tests.conftest import log_texts, ticking_job, wait_for, wait_status

PY = sys.executable
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: The threads pool runs two attempts side by side in one process; solo runs one at a time.
POOLS = pytest.mark.parametrize("pool, concurrency", [("solo", 1), ("threads", 2)])

#: Starts a child that ignores SIGTERM (only the kill after the grace period ends it), writes both
#: pids to the file named by argv[1], then ticks until stopped.
TREE_JOB = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('child ready', flush=True); time.sleep(600)"
    )])
    with open(sys.argv[1] + ".part", "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}")
    os.replace(sys.argv[1] + ".part", sys.argv[1])
    while True:
        print("tick", flush=True)
        time.sleep(0.2)
    """
)

TICKER = ticking_job(15, 0.2)
#: The same, but a first attempt, once done ticking, runs on until stopped: the warm shutdown always
#: finds it running, however long the test takes to send it.
HELD_FIRST = TICKER + 'if os.environ["TRAINFARM_ATTEMPT"] == "1":\n    time.sleep(600)\n'


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def node_pool(api, name: str) -> str | None:
    node = next((n for n in api.get("/nodes").json() if n["name"] == name), None)
    return node["info"].get("pool") if node else None


@POOLS
def test_pool_runs_jobs_and_cancel_kills_the_process_tree(api, start_worker, tmp_path, pool, concurrency):
    start_worker(
        "node-a", queues="cpu", pool=pool, concurrency=concurrency, overrides={"cancel_grace_period": 2}
    )
    wait_for(lambda: node_pool(api, "node-a") == pool, timeout=30, what=f"node-a to report the {pool} pool")

    pidfile = tmp_path / "pids"
    doomed = api.post("/jobs", json={"command": [PY, "-c", TREE_JOB, str(pidfile)], "queue": "cpu"}).json()[
        "id"
    ]
    wait_for(lambda: "child ready" in log_texts(api, doomed), timeout=60, what="the job's child process")
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2 and not any(gone(p) for p in pids)

    hello = [PY, "-c", "import sys; print('hello from', sys.argv[1]); print('second line')", pool]
    quick = api.post("/jobs", json={"command": hello, "queue": "cpu"}).json()["id"]
    if pool == "threads":  # a second thread runs it while the first job still runs
        wait_status(api, quick, {"succeeded", "failed"}, timeout=60)
        assert api.get(f"/jobs/{doomed}").json()["status"] == "running"

    assert api.post(f"/jobs/{doomed}/cancel").json()["cancel_requested"] is True
    job = wait_status(api, doomed, {"cancelled", "failed", "succeeded"}, timeout=30)
    assert job["status"] == "cancelled"
    # The job and its SIGTERM-deaf child alike: nothing of the tree is left.
    wait_for(lambda: all(gone(p) for p in pids), timeout=10, what=f"processes {pids} to be gone")

    job = wait_status(api, quick, {"succeeded", "failed"}, timeout=60)
    assert job["status"] == "succeeded", job["error"]
    assert [t for t in log_texts(api, quick) if not t.startswith("[trainfarm]")] == [
        f"hello from {pool}",
        "second line",
    ]


@pytest.mark.parametrize(
    "pool, concurrency, stop_signal",
    [
        ("solo", 1, signal.SIGTERM),
        ("threads", 2, signal.SIGTERM),
        ("solo", 1, signal.SIGINT),  # Ctrl-C: how a worker in a Windows console is stopped
    ],
    ids=["solo-SIGTERM", "threads-SIGTERM", "solo-SIGINT"],
)
def test_pool_warm_shutdown_hands_the_running_job_back(api, start_worker, pool, concurrency, stop_signal):
    leaving = start_worker("node-a", queues="cpu", pool=pool, concurrency=concurrency)
    leaving.stop_signal = stop_signal
    spec = {"command": [PY, "-c", HELD_FIRST], "queue": "cpu", "max_retries": 0}
    job_id = api.post("/jobs", json=spec).json()["id"]
    wait_for(lambda: "tick 2" in log_texts(api, job_id), timeout=60, what="the job to tick")
    first_pid = int(next(t for t in log_texts(api, job_id) if t.startswith("pid ")).split()[1])

    stopping = time.monotonic()
    leaving.stop()  # Celery's warm shutdown; stop() kills the worker if it is not gone in 30 s
    assert time.monotonic() - stopping < 20
    assert "got SIGTERM, saving" in log_texts(api, job_id)
    assert gone(first_pid)
    # Back on the queue, with no worker left to take it.
    wait_status(api, job_id, {"queued"}, timeout=30)

    start_worker("node-b", queues="cpu", pool=pool, concurrency=concurrency)
    job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=60)
    assert job["status"] == "succeeded", job["error"]
    first, second = job["attempt_list"]
    assert first["node"] == "node-a" and "handed back" in first["error"] and first["exit_code"] == 0
    assert second["node"] == "node-b" and second["status"] == "succeeded"
    # A hand-back is no failure: max_retries=0 and still the job went on.
    assert job["handbacks"] == 1
    ticks = [t for t in log_texts(api, job_id) if t.startswith("tick ")]
    assert ticks[-15:] == [f"tick {i}" for i in range(15)]
