"""Figure 6: a master holding 100,000 jobs, 10,000 of them queued — `GET /api/jobs` page latency next
to a bare FastAPI route reading the same rows, the master's memory, and what 50 nodes heartbeating
every 2 s cost its CPU."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import psutil
import redis
from sqlalchemy import insert

from bench.farm_client import command_job
from bench.report import Row
from bench.services import Services
from bench.stats import median, ms, percentile
from bench.submit import _bare_api
from master.db import init_db, make_engine
from master.models import Job, JobAttempt
from shared.settings import Settings
from shared.streams import NODES_KEY

JOBS, QUEUED = 100_000, 10_000
NODES, BEAT_SECONDS = 50, 2.0
PAGES, QUICK_PAGES = 300, 60
CPU_WINDOW, QUICK_CPU_WINDOW = 10.0, 4.0
FILTERS = ({}, {"status": "queued"}, {"status": "succeeded"}, {"queue": "cpu"})


def fill(settings: Settings) -> None:
    """Jobs and their attempts straight into the tables, as if submitted and (mostly) run long ago."""
    engine = make_engine(settings.database_url)
    init_db(engine)
    spec = json.dumps(command_job("python", "train.py", "--lr", "0.001"))
    begun = datetime.now(UTC) - timedelta(days=30)
    with engine.begin() as conn:
        for start in range(1, JOBS + 1, 10_000):
            jobs, attempts = [], []
            for i in range(start, start + 10_000):
                queued = i > JOBS - QUEUED
                created = begun + timedelta(seconds=i * 20)
                ended = None if queued else created + timedelta(minutes=5)
                status = "queued" if queued else "succeeded"
                jobs.append(
                    {
                        "id": i,
                        "queue": "cpu" if i % 2 else "gpu",
                        "priority": 5,
                        "status": status,
                        "spec": json.loads(spec),
                        "created_at": created,
                        "started_at": None if queued else created,
                        "finished_at": ended,
                        "attempts": 1,
                        "handbacks": 0,
                        "node": None if queued else "n1",
                        "cancel_requested": False,
                        "progress": {},
                        "metrics": {} if queued else {"acc": 0.9},
                    }
                )
                attempts.append(
                    {
                        "job_id": i,
                        "number": 1,
                        "status": status,
                        "created_at": created,
                        # Already published: the sweep leaves them alone, as in a real backlog.
                        "enqueued_at": created,
                        "started_at": None if queued else created,
                        "finished_at": ended,
                        "last_event_seq": 0 if queued else 4,
                        "info": {},
                    }
                )
            conn.execute(insert(Job), jobs)
            conn.execute(insert(JobAttempt), attempts)
    engine.dispose()


def _pages(
    url: str, path: str, count: int, filters: tuple[dict, ...], headers: dict[str, str] | None = None
) -> list[float]:
    """Pages at random depths (`before` anywhere in the table), filters taken in turn."""
    rng = random.Random(0)
    out = []
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        for i in range(count):
            params = {**filters[i % len(filters)], "limit": 50, "before": rng.randint(1, JOBS + 1)}
            begun = time.perf_counter()
            response = client.get(path, params=params)
            out.append(time.perf_counter() - begun)
            if response.status_code != 200:
                raise RuntimeError(f"page refused: {response.status_code} {response.text[:200]}")
    return out


class Heartbeats(threading.Thread):
    """NODES simulated workers writing their beat into the nodes hash, each every BEAT_SECONDS, spread
    evenly, with the fields and size of a real beat."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._redis = redis.Redis.from_url(url)
        self.stopping = threading.Event()

    def beat(self, node: int) -> None:
        seconds, micros = self._redis.time()
        info = {
            "name": f"sim-{node:02d}",
            "hostname": f"sim-{node:02d}",
            "os": "Linux 6.1",
            "pid": 1000 + node,
            "started": time.time() - 3600,
            "ts": seconds + micros / 1e6,
            "queues": ["cpu", "gpu"],
            "pool": "prefork",
            "concurrency": 1,
            "cpu_count": 32,
            "cpu_percent": 12.5,
            "memory_total": 2**37,
            "memory_available": 2**36,
            "memory_percent": 50.0,
            "gpus": [
                {
                    "index": g,
                    "name": "NVIDIA A100",
                    "memory_total": 2**35,
                    "memory_used": 2**30,
                    "utilization": 90,
                }
                for g in range(4)
            ],
            "gpu_slots": [0, 1, 2, 3],
            "running": [],
            "versions": {"python": "3.11.7", "torch": "2.13.0"},
        }
        self._redis.hset(NODES_KEY, info["name"], json.dumps(info))

    def run(self) -> None:
        tick = BEAT_SECONDS / NODES
        begun, i = time.monotonic(), 0
        while not self.stopping.is_set():
            self.beat(i % NODES)
            i += 1
            self.stopping.wait(max(0.0, begun + i * tick - time.monotonic()))


def _cpu(process: psutil.Process, seconds: float) -> float:
    """Share of one core the process used over the next `seconds`."""
    before, begun = process.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, took = process.cpu_times(), time.monotonic() - begun
    return (after.user + after.system - before.user - before.system) / took


def run(services: Services, quick: bool) -> list[Row]:
    settings = services.settings("scale", node_offline_after=15.0)
    fill(settings)
    master, bare = services.master(settings), _bare_api(services, settings, "bare-api-scale")
    auth = {"Authorization": f"Bearer {master.token}"}
    process = psutil.Process(master.pid)
    pages = QUICK_PAGES if quick else PAGES
    window = QUICK_CPU_WINDOW if quick else CPU_WINDOW
    beats = Heartbeats(settings.redis_url)
    try:
        _pages(master.url, "/api/jobs", 20, FILTERS, auth)  # warm-up: imports, caches, connection pools
        _pages(bare.url, "/jobs", 20, ({},))
        rss_start = process.memory_info().rss
        farm, farm_plain, base = [], [], []
        for _ in range(2):  # alternated halves
            farm += _pages(master.url, "/api/jobs", pages // 2, FILTERS, auth)
            farm_plain += _pages(master.url, "/api/jobs", pages // 8, ({},), auth)
            base += _pages(bare.url, "/jobs", pages // 8, ({},))
        idle = _cpu(process, window)
        beats.start()
        time.sleep(BEAT_SECONDS)  # every node has beaten once: the rows exist
        busy = _cpu(process, window)
        nodes = httpx.get(f"{master.url}/api/nodes", headers=auth, timeout=30).json()
        online = [n for n in nodes if n["online"]]
        farm += _pages(master.url, "/api/jobs", pages // 4, FILTERS, auth)  # paging while the nodes beat
        rss_end = process.memory_info().rss
    finally:
        beats.stopping.set()
        master.stop()
        bare.stop()
    growth = (rss_end - rss_start) / 2**20
    cost = (busy - idle) * 100
    return [
        Row(
            f"6 GET /api/jobs page p99, {JOBS:,} jobs, 4 filters (n={len(farm)})",
            percentile(ms(farm), 99),
            percentile(ms(base), 99),
            "ms",
            "< 50 ms",
            percentile(ms(farm), 99) < 50,
            f"p50 {median(ms(farm)):.1f} ms; 50 jobs a page at random depth, by status/queue/none; "
            "baseline: bare FastAPI route, plain SQL, no filter",
        ),
        Row(
            f"6 GET /api/jobs page p99, no filter (n={len(farm_plain)})",
            percentile(ms(farm_plain), 99),
            percentile(ms(base), 99),
            "ms",
            "< 50 ms",
            percentile(ms(farm_plain), 99) < 50,
        ),
        Row(
            "6 master RSS growth over the run",
            growth,
            None,
            "MB",
            "flat (< 10%)",
            growth < 0.1 * rss_start / 2**20,
            f"{rss_start / 2**20:.0f} MB → {rss_end / 2**20:.0f} MB",
        ),
        Row(
            f"6 master CPU for {NODES} nodes beating every {BEAT_SECONDS:.0f} s",
            cost,
            None,
            "% core",
            "< 10% of a core",
            cost < 10 and len(online) == NODES,
            f"{busy * 100:.1f}% with the beats vs {idle * 100:.1f}% idle over {window:.0f} s; "
            f"{len(online)} nodes shown online",
        ),
    ]
