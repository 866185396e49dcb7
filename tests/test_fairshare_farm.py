"""Fair share end to end, on a real master and real Celery workers: per-user caps hold at every
moment, a newcomer goes ahead of a long sweep, the queued cap and the member priority ceiling are
refused before anything is stored, a killed master loses and doubles nothing, and a queued job
says why it waits."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import wait_for, wait_status
from tests.fairshare_support import (
    HoldingSampler,
    held_job,
    make_member,
    set_limits,
    sleep_job,
    submit_batch,
    tally_job,
)

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

DONE = {"succeeded", "failed", "cancelled"}


def all_done(api, ids: list[int]) -> bool:
    return all(api.get(f"/jobs/{i}").json()["status"] in DONE for i in ids)


def wait_reason(api, job_id: int, expected: str) -> str:
    """The job's wait reason once it reads `expected` (admission decides a moment after a change)."""

    def check() -> str | None:
        reason = api.get(f"/jobs/{job_id}").json()["wait_reason"]
        return reason if reason == expected else None

    try:
        return wait_for(check, timeout=30, what=f"job {job_id} to read {expected!r}")  # type: ignore[return-value]
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; it reads {api.get(f'/jobs/{job_id}').json()['wait_reason']!r}"
        ) from None


def test_caps_hold_at_every_moment(api, master, start_worker):
    alice, bob = make_member(api, "alice"), make_member(api, "bob")
    set_limits(api, "alice", "cpu", max_devices=1)
    set_limits(api, "bob", "cpu", max_devices=2)
    start_worker("node-a", concurrency=2)
    start_worker("node-b", concurrency=2)  # 4 slots: room for more than both caps together
    wait_for(
        lambda: any(q["queue"] == "cpu" and q["slots"] == 4 for q in api.get("/fairshare").json()["queues"]),
        timeout=30,
        what="admission to see both workers' 4 slots",
    )
    with HoldingSampler(lambda: master.client(timeout=30), "cpu") as sampler:
        ids = submit_batch(api, alice, [sleep_job() for _ in range(20)])
        ids += submit_batch(api, bob, [sleep_job() for _ in range(20)])
        wait_for(lambda: all_done(api, ids), timeout=240, interval=0.5, what="all 40 jobs to end")
    statuses = Counter(api.get(f"/jobs/{i}").json()["status"] for i in ids)
    assert statuses == {"succeeded": 40}, statuses
    assert sampler.samples > 10, sampler.samples
    # Never past the caps, by either count; and the caps were reached, not merely never approached.
    assert sampler.running_max["alice"] <= 1 and sampler.running_max["bob"] <= 2, sampler.running_max
    assert sampler.running_max["alice"] == 1 and sampler.running_max["bob"] == 2, sampler.running_max
    assert sampler.fairshare_errors == [], sampler.fairshare_errors[:3]
    assert sampler.admitted_max["alice"] == 1 and sampler.admitted_max["bob"] == 2, sampler.admitted_max


def test_a_newcomer_goes_ahead_of_a_long_sweep(api, start_worker):
    alice, bob = make_member(api, "alice"), make_member(api, "bob")
    start_worker()  # one job slot
    sweep = submit_batch(api, bob, [sleep_job(0.5) for _ in range(30)])
    wait_status(api, sweep[0], {"running", *DONE}, timeout=60)
    answer = api.post("/jobs", json=sleep_job(0.5), headers=alice)
    assert answer.status_code == 201, answer.text
    newcomer = wait_status(api, answer.json()["id"], DONE, timeout=60)
    assert newcomer["status"] == "succeeded"
    third = wait_for(
        lambda: api.get(f"/jobs/{sweep[2]}").json()["started_at"], timeout=60, what="bob's third job to start"
    )
    assert newcomer["priority"] == api.get(f"/jobs/{sweep[2]}").json()["priority"]
    assert newcomer["started_at"] < third, (newcomer["started_at"], third)
    for job_id in sweep:  # the rest of the sweep has nothing to show
        api.post(f"/jobs/{job_id}/cancel")


def test_the_queued_cap_refuses_a_whole_submission_and_stores_none_of_it(api):
    bob = make_member(api, "bob")
    set_limits(api, "bob", "cpu", max_queued=5)  # no worker: everything bob submits stays queued
    refused = api.post("/jobs/batch", json={"jobs": [sleep_job() for _ in range(6)]}, headers=bob)
    assert refused.status_code == 429, refused.text
    message = refused.json()["message"]
    assert "max_queued" in message and "at most 5" in message and "adds 6" in message, message
    assert refused.json()["field"] == "jobs"
    assert api.get("/jobs", params={"owner": "bob"}).json()["items"] == []

    assert len(submit_batch(api, bob, [sleep_job() for _ in range(5)])) == 5
    sixth = api.post("/jobs", json=sleep_job(), headers=bob)
    assert sixth.status_code == 429, sixth.text
    assert "max_queued" in sixth.json()["message"] and "at most 5" in sixth.json()["message"]
    assert len(api.get("/jobs", params={"owner": "bob"}).json()["items"]) == 5


def test_priorities_above_seven_are_for_admins(api):
    alice = make_member(api, "alice")
    urgent = api.post("/jobs", json=sleep_job(priority=8), headers=alice)
    assert urgent.status_code == 403, urgent.text
    assert urgent.json()["field"] == "priority"
    in_batch = api.post("/jobs/batch", json={"jobs": [sleep_job(), sleep_job(priority=8)]}, headers=alice)
    assert in_batch.status_code == 403 and in_batch.json()["field"] == "jobs[1].priority", in_batch.text
    assert api.get("/jobs", params={"owner": "alice"}).json()["items"] == []

    assert api.post("/jobs", json=sleep_job(priority=7), headers=alice).status_code == 201
    admin = api.post("/jobs", json=sleep_job(priority=9))
    assert admin.status_code == 201 and admin.json()["priority"] == 9, admin.text


def test_a_killed_master_loses_and_doubles_nothing(api, master, start_worker, tmp_path: Path):
    tally = tmp_path / "tally"
    start_worker()  # one job slot
    ids = submit_batch(api, {}, [tally_job(tally, str(i)) for i in range(12)])

    def succeeded() -> int:
        return sum(api.get(f"/jobs/{i}").json()["status"] == "succeeded" for i in ids)

    wait_for(lambda: succeeded() >= 4, timeout=120, what="4 of the 12 jobs to succeed")
    assert master.pid is not None
    os.killpg(master.pid, signal.SIGKILL)  # kill -9: no shutdown code runs
    master.stop()  # only reaps it and closes its log
    master.start()

    jobs = [wait_status(api, i, DONE, timeout=180) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 12, [
        (j["id"], j["status"], j["error"]) for j in jobs
    ]
    assert [j["attempts"] for j in jobs] == [1] * 12
    runs = Counter(tally.read_text().split())
    assert runs == {str(i): 1 for i in range(12)}, runs


def test_a_queued_job_says_why_it_waits(api, master, start_worker, tmp_path: Path):
    alice = make_member(api, "alice")
    first_release, second_release = tmp_path / "release-1", tmp_path / "release-2"
    long = api.post("/jobs", json=held_job(first_release)).json()["id"]
    wait_reason(api, long, "waiting: no worker online takes jobs from queue cpu")

    start_worker()  # one job slot
    wait_status(api, long, {"running"}, timeout=60)
    second = api.post("/jobs", json=sleep_job()).json()["id"]
    third = api.post("/jobs", json=sleep_job()).json()["id"]
    wait_reason(api, second, "waiting: no free worker slot on cpu (1 in use)")
    wait_reason(api, third, "waiting: no free worker slot on cpu (1 in use); 1 job ahead")
    shares = api.get("/fairshare").json()
    [cpu] = [q for q in shares["queues"] if q["queue"] == "cpu"]
    assert (cpu["slots"], cpu["used_slots"], cpu["waiting"], cpu["workers"]) == (1, 1, 2, 1), cpu
    [admin] = [u for u in shares["users"] if u["queue"] == "cpu" and u["user"] == "admin"]
    assert admin["running_devices"] == 1 and admin["queued"] == 2 and admin["position"] == 0, admin

    first_release.touch()
    for job_id in (long, second, third):
        assert wait_status(api, job_id, DONE, timeout=60)["status"] == "succeeded"

    shares = api.get("/fairshare").json()
    [admin] = [u for u in shares["users"] if u["queue"] == "cpu" and u["user"] == "admin"]
    assert admin["usage"] > 0 and admin["running_devices"] == 0 and admin["position"] is None, admin
    assert shares["decided_at"] is not None

    set_limits(api, "alice", "cpu", max_devices=1)
    hers = api.post("/jobs", json=held_job(second_release), headers=alice).json()["id"]
    wait_status(api, hers, {"running"}, timeout=60)
    capped = api.post("/jobs", json=sleep_job(), headers=alice).json()["id"]
    wait_reason(api, capped, "waiting: alice already uses 1 of their 1 device on cpu")
    second_release.touch()
    assert wait_status(api, capped, DONE, timeout=60)["status"] == "succeeded"


def test_the_fairshare_table_shows_a_users_own_caps(api, start_worker, tmp_path: Path):
    alice = make_member(api, "alice")
    release = tmp_path / "release"
    set_limits(api, "alice", "cpu", max_devices=1, max_queued=3)
    start_worker("node-a", concurrency=2)  # room for both: only her cap holds the second back
    running = api.post("/jobs", json=held_job(release), headers=alice).json()["id"]
    wait_status(api, running, {"running"}, timeout=60)
    capped = api.post("/jobs", json=sleep_job(), headers=alice).json()["id"]
    wait_reason(api, capped, "waiting: alice already uses 1 of their 1 device on cpu")

    answer = api.get("/fairshare")
    release.touch()
    assert answer.status_code == 200, answer.text
    [row] = [u for u in answer.json()["users"] if u["user"] == "alice" and u["queue"] == "cpu"]
    assert (row["running_devices"], row["max_devices"], row["queued"], row["max_queued"]) == (1, 1, 1, 3), row
    assert row["limits_from"] == {"max_devices": "user", "max_queued": "user"}, row
    assert row["position"] is not None, row
