"""Figure 3: job submissions per second and their p99 at 16 concurrent clients, on SQLite and on
PostgreSQL, next to a bare FastAPI route doing one insert and one Celery publish on the same database;
and one batch request of 1,000 jobs (a sweep)."""

from __future__ import annotations

import time

import httpx

from bench.farm_client import command_job
from bench.loadgen import LoadResult, closed_loop
from bench.report import Row
from bench.services import PythonProcess, Services
from bench.stats import median, ms, percentile
from shared.settings import Settings
from trainfarm.services import free_port

CLIENTS = 16
SECONDS, QUICK_SECONDS = 5.0, 2.0
ROUNDS, QUICK_ROUNDS = 2, 1
BATCH, BATCH_ROUNDS = 1000, 3
SPEC = command_job("true")


def _bare_api(services: Services, settings: Settings, name: str) -> PythonProcess:
    port = free_port()
    argv = [
        "-m",
        "uvicorn",
        "bench.baseline_api:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]

    def ready(_proc: PythonProcess) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    proc = PythonProcess(
        settings.data_dir / "bare-api", name, argv, settings, ready, f"http://127.0.0.1:{port}"
    )
    services.run(proc)
    return proc


def _batch_seconds(url: str) -> list[float]:
    out = []
    with httpx.Client(base_url=f"{url}/api", timeout=120) as api:
        for _ in range(BATCH_ROUNDS):
            begun = time.perf_counter()
            response = api.post("/jobs/batch", json={"jobs": [SPEC] * BATCH})
            out.append(time.perf_counter() - begun)
            if response.status_code != 201 or len(response.json()) != BATCH:
                raise RuntimeError(f"batch refused: {response.status_code} {response.text[:300]}")
    return out


def _database(services: Services, kind: str, quick: bool) -> list[Row]:
    settings = services.settings(f"submit_{kind}", kind)
    master, bare = services.master(settings), _bare_api(services, settings, f"bare-api-{kind}")
    seconds = QUICK_SECONDS if quick else SECONDS
    farm: list[LoadResult] = []
    base: list[LoadResult] = []
    try:
        # Warm both up (connection pools, first inserts), then alternate so both see the same machine.
        closed_loop(master.url, "POST", "/api/jobs", SPEC, CLIENTS, 0.5, expect=201)
        closed_loop(bare.url, "POST", "/jobs", SPEC, CLIENTS, 0.5, expect=201)
        for _ in range(QUICK_ROUNDS if quick else ROUNDS):
            farm.append(closed_loop(master.url, "POST", "/api/jobs", SPEC, CLIENTS, seconds, expect=201))
            base.append(closed_loop(bare.url, "POST", "/jobs", SPEC, CLIENTS, seconds, expect=201))
        batch = _batch_seconds(master.url)
    finally:
        master.stop()
        bare.stop()
    errors = sum(r.errors for r in farm + base)
    if errors:
        raise RuntimeError(f"{errors} submissions were refused")
    label = "SQLite" if kind == "sqlite" else "PostgreSQL"
    rate, base_rate = median([r.rate for r in farm]), median([r.rate for r in base])
    p99 = median([percentile(ms(r.latencies), 99) for r in farm])
    base_p99 = median([percentile(ms(r.latencies), 99) for r in base])
    return [
        Row(
            f"3 submissions/s, {CLIENTS} clients, {label}",
            rate,
            base_rate,
            "/s",
            "≥ 0.8x baseline",
            rate >= 0.8 * base_rate,
            "baseline: bare FastAPI route, one insert + one Celery publish. Limited by the master's "
            "Python work per job on 2 shared cores: 2 transactions, 5 statements and 2 reloads of "
            "expired rows (master/lifecycle.py) against 1 insert; see README",
        ),
        Row(f"3 submission p99, {CLIENTS} clients, {label}", p99, base_p99, "ms", "report", None),
        Row(
            f"3 batch of {BATCH:,} jobs, one request, {label}",
            median(batch),
            None,
            "s",
            "< 2 s",
            median(batch) < 2,
            f"median of {len(batch)}; limited by a query per job to reload rows a commit expired "
            "(master/lifecycle.py); see README",
        ),
    ]


def run(services: Services, quick: bool) -> list[Row]:
    rows = _database(services, "sqlite", quick)
    if services.postgres is not None:
        rows += _database(services, "postgresql", quick)
    return rows
