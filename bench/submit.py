"""Figure 3: job submissions per second and their p99 at 16 concurrent clients, on SQLite and on
PostgreSQL, next to a bare FastAPI route doing one insert and one Celery publish on the same database;
what checking the caller costs (the same master with authentication off); and one batch request of
1,000 jobs (a sweep)."""

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
ROUNDS, QUICK_ROUNDS = 4, 1
BATCH, BATCH_ROUNDS = 1000, 3
SPEC = command_job("true")
#: High enough never to refuse a submission, but on: its Redis round trip is part of what auth costs.
MUTATIONS_PER_MINUTE = 1_000_000_000


def submitting(url: str, token: str, seconds: float) -> LoadResult:
    """`CLIENTS` connections submitting jobs with the token, each as soon as its last is answered."""
    auth = {"Authorization": f"Bearer {token}"}
    return closed_loop(url, "POST", "/api/jobs", SPEC, CLIENTS, seconds, expect=201, headers=auth)


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


def _batch_seconds(url: str, token: str) -> list[float]:
    out = []
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"{url}/api", timeout=120, headers=auth) as api:
        for _ in range(BATCH_ROUNDS):
            begun = time.perf_counter()
            response = api.post("/jobs/batch", json={"jobs": [SPEC] * BATCH})
            out.append(time.perf_counter() - begun)
            if response.status_code != 201 or len(response.json()) != BATCH:
                raise RuntimeError(f"batch refused: {response.status_code} {response.text[:300]}")
    return out


def _database(services: Services, kind: str, quick: bool) -> list[Row]:
    limits = {"rate_limit_mutations_per_minute": MUTATIONS_PER_MINUTE}
    settings = services.settings(f"submit_{kind}", kind, **limits)
    # The same master with authentication off (its own database, so both hold as many rows).
    open_settings = services.settings(f"submit_open_{kind}", kind, auth_enabled=False, **limits)
    master, bare = services.master(settings), _bare_api(services, settings, f"bare-api-{kind}")
    open_master = services.master(open_settings)
    # The open master ignores the header; sent anyway, so both read the same request bytes.
    token = master.token
    seconds = QUICK_SECONDS if quick else SECONDS
    farm: list[LoadResult] = []
    open_farm: list[LoadResult] = []
    base: list[LoadResult] = []
    try:
        # Warm all up (connection pools, first inserts), then alternate so all see the same machine.
        submitting(master.url, token, 0.5)
        submitting(open_master.url, token, 0.5)
        closed_loop(bare.url, "POST", "/jobs", SPEC, CLIENTS, 0.5, expect=201)
        for round_ in range(QUICK_ROUNDS if quick else ROUNDS):
            # Auth on and off swap places each round, so neither always runs on a machine the
            # other has just warmed (or left busy with its background loops).
            pair = [(farm, master), (open_farm, open_master)]
            for results, proc in pair if round_ % 2 == 0 else pair[::-1]:
                results.append(submitting(proc.url, token, seconds))
            base.append(closed_loop(bare.url, "POST", "/jobs", SPEC, CLIENTS, seconds, expect=201))
        batch = _batch_seconds(master.url, token)
    finally:
        master.stop()
        open_master.stop()
        bare.stop()
    errors = sum(r.errors for r in farm + open_farm + base)
    if errors:
        raise RuntimeError(f"{errors} submissions were refused")
    label = "SQLite" if kind == "sqlite" else "PostgreSQL"
    rate, base_rate = median([r.rate for r in farm]), median([r.rate for r in base])
    open_rate = median([r.rate for r in open_farm])
    p99 = median([percentile(ms(r.latencies), 99) for r in farm])
    base_p99 = median([percentile(ms(r.latencies), 99) for r in base])
    open_p99 = median([percentile(ms(r.latencies), 99) for r in open_farm])
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
        Row(
            f"3 submissions/s with auth vs without, {label}",
            rate,
            open_rate,
            "/s",
            "≥ 0.95x",
            rate >= 0.95 * open_rate,
            f"baseline: the same master with TRAINFARM_AUTH_ENABLED=false; auth: token lookup joined "
            f"with its user, rate-limit hit in Redis (limit on, never reached); p99 {p99:.0f} ms vs "
            f"{open_p99:.0f} ms",
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
