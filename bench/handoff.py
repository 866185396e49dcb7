"""Figure 10: from a slot freeing to the next job running. A worker of concurrency 1 and a burst of
short jobs submitted at once: the gap from job k's end to job k+1's start, both stamped by the
worker's own events (one clock). The baseline: two bare Celery tasks queued back to back on the same
Redis, the second's start minus the first's (its body is one RPUSH, so that is its end to the next
start, within a Redis round trip)."""

from __future__ import annotations

import itertools
import uuid

import httpx
import redis
from celery import Celery

from bench import baseline_celery
from bench.dispatch import _baseline_worker
from bench.farm_client import command_job, timestamp, wait_end
from bench.report import Row
from bench.services import Services
from bench.stats import median, ms, percentile
from shared.celery_config import celery_config

JOBS, QUICK_JOBS = 60, 20
BARE_PAIRS, QUICK_BARE_PAIRS = 30, 10


def _bare_gap(publisher: Celery, client: redis.Redis) -> float:
    keys = [f"bench:handoff:{uuid.uuid4().hex}" for _ in range(2)]
    for key in keys:
        publisher.send_task(baseline_celery.TASK, args=[key], queue=baseline_celery.QUEUE)
    starts = []
    for key in keys:
        popped = client.blpop([key], timeout=30)
        if popped is None:
            raise RuntimeError("a bare Celery task did not run within 30 s")
        starts.append(float(popped[1]))
    return starts[1] - starts[0]


def run(services: Services, quick: bool) -> list[Row]:
    settings = services.settings("handoff")
    master = services.master(settings)
    procs = [master, services.worker(settings), _baseline_worker(services, settings)]
    publisher = Celery("bench-publisher")
    publisher.conf.update(celery_config(settings))
    client = redis.Redis.from_url(settings.redis_connection_url())
    try:
        with master.client(timeout=60) as api:
            wait_end(api, _submit(api, 1)[0])  # warm the worker
            ids = _submit(api, QUICK_JOBS if quick else JOBS)
            jobs = [wait_end(api, job_id) for job_id in ids]
        bare = [_bare_gap(publisher, client) for _ in range(QUICK_BARE_PAIRS if quick else BARE_PAIRS)]
    finally:
        for proc in procs:
            proc.stop()
        client.close()
    bad = [j["id"] for j in jobs if j["status"] != "succeeded" or not j["started_at"] or not j["finished_at"]]
    if bad:
        raise RuntimeError(f"handoff jobs {bad} did not succeed with both times")
    ordered = sorted(jobs, key=lambda j: timestamp(j["started_at"]))
    gaps = [
        timestamp(nxt["started_at"]) - timestamp(prev["finished_at"])
        for prev, nxt in itertools.pairwise(ordered)
    ]
    gap_ms, bare_ms = ms(gaps), ms(bare)
    n = len(gaps)
    return [
        Row(
            f"10 slot freed → next job running p99, worker -c 1, {len(jobs)} jobs at once (n={n})",
            percentile(gap_ms, 99),
            percentile(bare_ms, 99),
            "ms",
            "< 100 ms",
            percentile(gap_ms, 99) < 100,
            f"job k's finished_at → job k+1's started_at, both the worker's clock; p50 {median(gap_ms):.1f} ms "
            f"vs {median(bare_ms):.2f} ms; baseline: two bare Celery tasks queued back to back, start → start "
            f"(n={len(bare)})",
        ),
        Row(
            "10 slot freed → next job running p50",
            median(gap_ms),
            median(bare_ms),
            "ms",
            "report",
            None,
        ),
    ]


def _submit(api: httpx.Client, count: int) -> list[int]:
    """The burst in one request, so every job waits before the first ends."""
    response = api.post("/jobs/batch", json={"jobs": [command_job("true") for _ in range(count)]})
    if response.status_code != 201:
        raise RuntimeError(f"batch refused: {response.status_code} {response.text[:200]}")
    return [int(job["id"]) for job in response.json()]
