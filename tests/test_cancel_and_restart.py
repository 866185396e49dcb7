"""Cancellation of queued and running jobs, and a master restart in the middle of a job."""

from __future__ import annotations

import sys
import textwrap
import time

import psutil
import pytest
import redis

from shared.events import parse_event
from shared.schemas import EventKind
from shared.streams import EVENTS_KEY, log_key
from tests.conftest import log_texts, ticking_job, wait_for, wait_status

PY = sys.executable

SLOW_JOB = ticking_job(3000, 0.1)


def test_cancel_running_job_stops_its_processes_and_keeps_the_log(api, worker, settings):
    job_id = api.post("/jobs", json={"command": [PY, "-c", SLOW_JOB], "queue": "cpu"}).json()["id"]
    wait_for(lambda: any(t.startswith("tick 5") for t in log_texts(api, job_id)), timeout=60, what="ticks")
    pid = int(next(t for t in log_texts(api, job_id) if t.startswith("pid ")).split()[1])
    assert psutil.pid_exists(pid)

    asked = time.monotonic()
    assert api.post(f"/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    job = wait_status(api, job_id, {"cancelled", "failed", "succeeded"}, timeout=30)
    assert job["status"] == "cancelled"
    assert time.monotonic() - asked < 10
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    # The partial log, including what the program printed on its way out, is archived in S3.
    redis.Redis.from_url(settings.redis_url).delete(log_key(job_id))
    lines = log_texts(api, job_id)
    assert "got SIGTERM, saving" in lines
    ticks = [t for t in lines if t.startswith("tick ")]
    assert ticks == [f"tick {i}" for i in range(len(ticks))] and len(ticks) > 5
    attempt = api.get(f"/jobs/{job_id}").json()["attempt_list"][0]
    assert attempt["status"] == "cancelled" and attempt["log_key"]


def test_cancelled_queued_job_never_runs(api, start_worker):
    marker = "this must never print"
    first = api.post("/jobs", json={"command": [PY, "-c", f"print('{marker}')"], "queue": "cpu"}).json()["id"]
    assert api.post(f"/jobs/{first}/cancel").json()["status"] == "cancelled"
    second = api.post("/jobs", json={"command": [PY, "-c", "print('second')"], "queue": "cpu"}).json()["id"]

    start_worker()
    wait_status(api, second, {"succeeded"})
    # The worker took the first message before the second (one queue, FIFO) and dropped it.
    detail = api.get(f"/jobs/{first}").json()
    assert detail["status"] == "cancelled"
    assert detail["attempt_list"][0]["started_at"] is None
    assert marker not in log_texts(api, first)


def finished_event_waiting(settings, job_id: int) -> bool:
    """Whether the job's attempt has reported its end into the events stream (read or not)."""
    entries = redis.Redis.from_url(settings.redis_url).xrange(EVENTS_KEY)
    for _id, fields in entries:
        event = parse_event(fields[b"event"])
        if event.job_id == job_id and event.kind == EventKind.FINISHED:
            return True
    return False


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_master_restart_during_a_job_loses_no_event(api, master, worker, settings, tmp_path):
    # Half the steps, then held until released: the master stops while the job runs, and the rest
    # of its events (the end included) reach Redis while no master runs.
    script = textwrap.dedent(
        """
        import os, sys, time
        from worker.runtime import report
        for i in range(40):
            if i == 20:
                while not os.path.exists(sys.argv[1]):
                    time.sleep(0.05)
            print("step", i, flush=True)
            report({"loss": 1.0 / (i + 1)}, step=i, epoch=i // 10)
            time.sleep(0.05)
        """
    )
    release = tmp_path / "release"
    job_id = api.post("/jobs", json={"command": [PY, "-c", script, str(release)], "queue": "cpu"}).json()[
        "id"
    ]
    wait_for(lambda: "step 19" in log_texts(api, job_id), timeout=60, what="the first half of the steps")
    master.stop()
    release.touch()
    wait_for(lambda: finished_event_waiting(settings, job_id), timeout=60, what="the end of the job in Redis")
    master.start()

    job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=60)
    assert job["status"] == "succeeded"
    assert [t for t in log_texts(api, job_id) if t.startswith("step ")] == [f"step {i}" for i in range(40)]
    history = api.get(f"/jobs/{job_id}/metrics").json()
    assert [m["step"] for m in history] == list(range(40))
    assert job["metrics"]["loss"] == pytest.approx(1 / 40)
