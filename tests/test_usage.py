"""Per-job resource use: a real job's CPU and memory samples arrive from its worker, are summarized
on the job, served by GET /api/jobs/{id}/usage (404 for a job the caller may not see) and drawn on
the job's page in a real browser; the
idle-GPU rule, judged on the samples a fake GPU node sends (a fault injected into the event stream),
flags a job whose GPUs stay idle and, with gpu_idle_stop, cancels it with an error that says why."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session, select

from master.events import EventConsumer, apply_entries
from master.job_usage import IdleRule, count_idle_gpu_jobs
from master.models import AuditEvent, Job, JobAttempt, JobUsage
from shared.events import (
    AnyEvent,
    CpuUsage,
    EventData,
    Finished,
    GpuUsage,
    Started,
    Usage,
    envelope,
    parse_event,
)
from shared.schemas import AttemptOutcome, EventKind
from shared.settings import Settings
from shared.status import JobStatus
from shared.streams import EventBus, cancel_key
from tests.browser_support import browser_pages, log_in, screenshot
from tests.conftest import wait_for, wait_status
from trainfarm.services import RedisServer
from trainfarm.services.farm import MasterProcess
from worker.usage_sampler import ProcessTree, gpu_usage

PY = sys.executable
MIB = 1024 * 1024
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
GPU_SPEC = {"command": ["python", "train.py"], "queue": "gpu", "devices": 2}
#: The rule the idle tests judge by: under 5 % for ten minutes.
RULE = IdleRule(threshold=0.05, after=600.0)


# The master side, on SQLite alone -------------------------------------------------------------


@pytest.fixture
def job_id(engine: Engine) -> int:
    """A GPU job whose first attempt a (fake) GPU node has started."""
    with Session(engine) as session:
        job = Job(queue="gpu", devices=2, spec=GPU_SPEC)
        session.add(job)
        session.flush()
        assert job.id is not None
        session.add(JobAttempt(job_id=job.id, number=1))
        session.commit()
        job_id = job.id
    assert apply_entries(engine, [entry(job_id, 1, Started(pid=7))]) == [None]
    return job_id


def event(job_id: int, seq: int, data: EventData, ts: float | None = None, attempt: int = 1) -> AnyEvent:
    """What the fake GPU node reports, at the time `ts` says (Unix seconds; now by default)."""
    made = envelope(data, job_id=job_id, attempt=attempt, seq=seq, node="gpu-node")
    return made if ts is None else made.model_copy(update={"ts": ts})


def entry(job_id: int, seq: int, data: EventData, ts: float | None = None, attempt: int = 1) -> bytes:
    return event(job_id, seq, data, ts, attempt).model_dump_json().encode()


def gpus(*utils: float | None, used: int = 10 * MIB) -> Usage:
    return Usage(
        gpus=[
            GpuUsage(index=i, util=u, mem_used=used, mem_total=80 * 1024 * MIB) for i, u in enumerate(utils)
        ]
    )


def job_of(engine: Engine, job_id: int) -> Job:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def test_usage_samples_are_validated_as_the_worker_must_write_them() -> None:
    with pytest.raises(ValidationError, match="gpus or cpu"):
        Usage()
    with pytest.raises(ValidationError):
        GpuUsage(index=0, util=101.0)
    with pytest.raises(ValidationError):
        Usage(gpus=[GpuUsage(index=i) for i in range(65)])
    raw = json.loads(entry(1, 1, Usage(cpu=CpuUsage(percent=1.0, rss=1))))
    assert parse_event(json.dumps(raw)).kind == EventKind.USAGE
    raw["data"]["cpu"]["rss"] = -1
    with pytest.raises(ValidationError, match="rss"):
        parse_event(json.dumps(raw))


def test_samples_are_stored_and_summarized_on_the_job(engine: Engine, job_id: int) -> None:
    samples = [gpus(40.0, 60.0, used=3 * MIB), gpus(80.0, 100.0, used=9 * MIB), gpus(0.0, 20.0, used=5 * MIB)]
    entries = [entry(job_id, seq, s) for seq, s in enumerate(samples, start=2)]
    assert apply_entries(engine, entries) == [None] * 3
    assert apply_entries(engine, entries) == [None] * 3  # Redis delivered them again: replays, dropped
    cpu = Usage(cpu=CpuUsage(percent=150.0, rss=300 * MIB))
    assert apply_entries(
        engine, [entry(job_id, 5, cpu), entry(job_id, 6, Usage(cpu=CpuUsage(percent=50.0, rss=100 * MIB)))]
    ) == [None, None]
    summary = job_of(engine, job_id).progress["usage"]
    assert summary["gpu_util_mean"] == pytest.approx((50 + 90 + 10) / 3)
    assert (summary["gpu_mem_peak"], summary["gpu_mem_total"], summary["gpu_samples"]) == (
        9 * MIB,
        80 * 1024 * MIB,
        3,
    )
    assert (summary["cpu_percent_mean"], summary["rss_peak"], summary["cpu_samples"]) == (100.0, 300 * MIB, 2)
    assert summary["gpu_idle"] is False
    with Session(engine) as session:
        rows = session.exec(select(JobUsage).order_by(JobUsage.id)).all()  # type: ignore[arg-type]
    assert len(rows) == 5
    assert [(r.attempt, r.cpu_percent, r.rss) for r in rows[3:]] == [
        (1, 150.0, 300 * MIB),
        (1, 50.0, 100 * MIB),
    ]
    assert rows[1].gpus == [
        {"index": 0, "util": 80.0, "mem_used": 9 * MIB, "mem_total": 80 * 1024 * MIB},
        {"index": 1, "util": 100.0, "mem_used": 9 * MIB, "mem_total": 80 * 1024 * MIB},
    ]


def test_gpus_idle_for_the_set_time_flag_the_job_once_and_busy_ones_clear_it(
    engine: Engine, job_id: int
) -> None:
    t0 = 1_800_000_000.0

    def send(seq: int, at: float, *utils: float | None) -> None:
        assert apply_entries(engine, [entry(job_id, seq, gpus(*utils), ts=t0 + at)], idle=RULE) == [None]

    send(2, 0, 1.0, 4.9)
    send(3, 599, 0.0, 2.0)
    job = job_of(engine, job_id)
    assert job.progress["usage"]["gpu_idle"] is False and job.warnings == []
    send(4, 600, 3.0, 0.0)
    job = job_of(engine, job_id)
    assert job.progress["usage"]["gpu_idle"] is True
    assert len(job.warnings) == 1 and job.warnings[0].startswith(
        "GPU 0,1 idle: under 5% utilisation for 600 s"
    )
    with Session(engine) as session:
        assert count_idle_gpu_jobs(session) == 1
    send(5, 900, 0.0, 0.0)  # still idle: flagged already, no second warning
    assert len(job_of(engine, job_id).warnings) == 1
    send(6, 1000, 0.0, 30.0)  # one GPU at work is a job at work
    job = job_of(engine, job_id)
    assert job.progress["usage"]["gpu_idle"] is False and "idle_since" not in job.progress["usage"]
    with Session(engine) as session:
        assert count_idle_gpu_jobs(session) == 0
    # A GPU that reports no utilisation (a MIG slice) neither starts nor ends an idle spell.
    send(7, 1100, 0.0, None)
    send(8, 5000, 0.0, None)
    assert "idle_since" not in job_of(engine, job_id).progress["usage"]
    assert not job_of(engine, job_id).cancel_requested  # gpu_idle_stop is off


def test_an_older_attempts_samples_are_kept_but_judge_nothing(engine: Engine, job_id: int) -> None:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.attempts = 2
        session.add(JobAttempt(job_id=job_id, number=2))
        session.add(job)
        session.commit()
    assert apply_entries(
        engine, [entry(job_id, 2, gpus(0.0), ts=1.0), entry(job_id, 3, gpus(0.0), ts=9999.0)], idle=RULE
    ) == [None, None]
    job = job_of(engine, job_id)
    assert "usage" not in job.progress and job.warnings == []
    with Session(engine) as session:
        assert len(session.exec(select(JobUsage)).all()) == 2


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


def test_gpu_idle_stop_cancels_the_job_with_an_error_that_says_why(
    engine: Engine, job_id: int, broker: redis.Redis
) -> None:
    """Over the real event stream: the fake GPU node's samples go through Redis to the consumer,
    which raises the cancel flag the worker obeys; the worker's `cancelled` end then ends the job."""
    bus = EventBus(broker)
    consumer = EventConsumer(
        bus, engine, idle=IdleRule(threshold=0.05, after=600.0, stop=True), broker=broker
    )
    consumer.poll(block_ms=10)  # caught up with nothing pending

    def publish(seq: int, data: EventData, ts: float) -> None:
        bus.publish(event(job_id, seq, data, ts))

    def applied(seq: int) -> bool:
        consumer.poll(block_ms=100)
        with Session(engine) as session:
            attempt = session.exec(select(JobAttempt).where(JobAttempt.job_id == job_id)).one()
            return attempt.last_event_seq >= seq

    publish(2, gpus(0.0, 0.0), 1000.0)
    publish(3, gpus(1.0, 0.0), 1300.0)
    wait_for(lambda: applied(3), 10)
    assert broker.get(cancel_key(job_id)) is None and not job_of(engine, job_id).cancel_requested
    publish(4, gpus(2.0, 0.0), 1600.0)
    wait_for(lambda: applied(4), 10)
    assert job_of(engine, job_id).cancel_requested
    assert broker.get(cancel_key(job_id)) == b"1"
    job = job_of(engine, job_id)
    assert job.status == JobStatus.RUNNING and job.progress["usage"]["gpu_idle"] is True
    with Session(engine) as session:
        [audit] = session.exec(select(AuditEvent).where(AuditEvent.action == "job.cancel")).all()
    assert (audit.actor, audit.target, audit.detail) == (None, f"job {job_id}", {"reason": "gpu idle"})

    # The worker saw the flag and stopped the job, in its own words.
    publish(5, Finished(outcome=AttemptOutcome.CANCELLED, error="cancelled by user", exit_code=-15), 1601.0)
    wait_for(lambda: applied(5), 10)
    job = job_of(engine, job_id)
    assert job.status == JobStatus.CANCELLED
    assert (
        job.error == "cancelled by the farm: its GPUs stayed under 5% utilisation for 600 s (gpu_idle_stop)"
    )
    assert job.warnings[0].startswith("GPU 0,1 idle: under 5% utilisation for 600 s")


# The worker's side ---------------------------------------------------------------------------

#: A parent that starts a child holding 48 MiB, both spinning until their stdin closes.
CHILD = textwrap.dedent(
    """
    import sys, threading
    def spin():
        while True:
            pass
    held = b"x" * (48 << 20)
    threading.Thread(target=spin, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    """
)
TREE = textwrap.dedent(
    f"""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    child.stdout.readline()
    print("ready", flush=True)
    sys.stdin.read()
    child.stdin.close()
    child.wait()
    """
)


def test_a_process_trees_cpu_and_memory_include_its_children() -> None:
    proc = subprocess.Popen([PY, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        tree = ProcessTree(proc.pid)
        tree.read()  # the baseline
        sample = wait_for(
            lambda: (s := tree.read()) is not None and s.percent > 10 and s, 30, 0.5, "the child's CPU"
        )
        assert isinstance(sample, CpuUsage) and sample.rss >= 48 * MIB
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    assert ProcessTree(proc.pid).read() is None  # gone: nothing to say


def test_only_the_attempts_gpus_are_sampled() -> None:
    """The node's GPUs as worker/gpus.py lists them (canned here: a fake four-GPU node)."""
    node = [
        {"index": i, "utilization_percent": u, "memory_used": i * MIB, "memory_total": 16 * MIB}
        for i, u in enumerate([10, None, 250, 40])
    ]
    assert gpu_usage((1, 2), lambda: node) == [
        GpuUsage(index=1, util=None, mem_used=MIB, mem_total=16 * MIB),
        GpuUsage(index=2, util=100.0, mem_used=2 * MIB, mem_total=16 * MIB),  # a bad reading clamped
    ]
    assert gpu_usage((7,), lambda: node) == []


# A real job on a CPU worker ---------------------------------------------------------------------

#: Holds 64 MiB and spins until the file named by its argument exists.
BUSY = textwrap.dedent(
    """
    import os, sys
    held = b"x" * (64 << 20)
    while not os.path.exists(sys.argv[1]):
        sum(range(10000))
    print("done", len(held), flush=True)
    """
)


@sqlite_only
def test_a_real_jobs_cpu_and_memory_samples_arrive_are_summarized_and_drawn(
    settings: Settings, start_worker, tmp_path: Path
) -> None:
    own = settings.model_copy(update={"job_visibility": "own"})
    stop = tmp_path / "stop"
    with MasterProcess(tmp_path / "master", own) as master, master.client(timeout=30) as api:
        start_worker(overrides={"usage_sample_interval": 0.5})
        job_id = api.post("/jobs", json={"command": [PY, "-c", BUSY, str(stop)], "queue": "cpu"}).json()["id"]

        def busy_samples() -> list[dict] | None:
            rows = api.get(f"/jobs/{job_id}/usage").json()
            held = [r for r in rows if r["rss"] >= 64 * MIB and r["cpu_percent"] > 10]
            return rows if len(held) >= 2 else None

        wait_for(busy_samples, 60, 0.5, "two samples of the busy job")
        stop.touch()
        job = wait_status(api, job_id, {"succeeded", "failed"})
        assert job["status"] == "succeeded", job["error"]
        rows = api.get(f"/jobs/{job_id}/usage").json()
        assert all(r["attempt"] == 1 and r["gpus"] is None for r in rows)
        summary = job["progress"]["usage"]
        assert summary["cpu_samples"] == len(rows)  # every sample came before the attempt's end
        assert summary["rss_peak"] == max(r["rss"] for r in rows) >= 64 * MIB
        assert summary["cpu_percent_mean"] == pytest.approx(sum(r["cpu_percent"] for r in rows) / len(rows))
        assert "gpu_util_mean" not in summary
        # The worker paces the samples, whatever the job does: never closer than the interval.
        times = [datetime.fromisoformat(r["ts"]).timestamp() for r in rows]
        assert all(b - a >= 0.45 for a, b in pairwise(times)), times
        assert api.get(f"/jobs/{job_id}/usage", params={"offset": 1, "limit": 1}).json() == rows[1:2]

        # Someone else's job under TRAINFARM_JOB_VISIBILITY=own: as if it were not there.
        password = "alice-password-123"
        made = api.post("/users", json={"name": "alice", "role": "member", "password": password})
        assert made.status_code == 201, made.text
        token = api.post("/auth/login", data={"username": "alice", "password": password}).json()[
            "access_token"
        ]
        alice = {"Authorization": f"Bearer {token}"}
        hidden = api.get(f"/jobs/{job_id}/usage", headers=alice)
        assert hidden.status_code == 404 and hidden.json()["field"] == "job_id", hidden.text
        assert api.get(f"/jobs/{job_id}", headers=alice).json()["progress"] == {}

        # The job's page draws the samples (CPU and memory: two series) beside their summary. Last,
        # as it needs the browser (a loud skip without one, a failure under CI=true).
        with browser_pages() as open_at:
            from playwright.sync_api import expect  # after browser_pages: it skips without playwright

            page, watch = open_at(master.url)
            log_in(page, master.credentials.user, master.credentials.password)
            page.locator(f"#jobs-body tr[data-id='{job_id}']").click()
            chart = page.locator("#detail .usage-chart[data-chart=uplot]")
            expect(chart).to_have_attribute("data-series", "2")
            expect(chart.locator(".uplot canvas")).to_have_count(1)
            facts = page.locator("#detail .usage-summary")
            expect(facts).to_contain_text("CPU (mean)")
            expect(facts).to_contain_text("memory (peak)")
            expect(page.locator("#detail .gpu-idle")).to_be_hidden()
            screenshot(page, "job-resource-use")
            watch.check(page)
