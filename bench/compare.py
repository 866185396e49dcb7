"""Figure 11: GET /api/compare of 20 runs with 10,000 metric reports each (three metrics a report),
through a real master on SQLite, once the master's series loop has summarized the ended runs (as it
does for every job that ends): the first look after the master starts, first looks with other
`points` (cold: nothing downsampled in memory, drawn from the summaries), looking again (warm), and
more points than a summary holds (every report read), next to one job's GET
/api/jobs/{id}/metrics?limit=10000 and a plain SQL read of all the rows, same run, same database.

`python -m bench.compare [--quick]` runs it alone; `bench.run` calls `run` like every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert

from bench.farm_client import command_job
from bench.report import Row, machine, render
from bench.services import Services
from bench.stats import median, ms, percentile
from master.db import init_db, make_engine
from master.experiments.compare_reader import SUMMARY_POINTS
from master.models import Job, JobAttempt, JobMetric
from shared.settings import Settings

JOBS, REPORTS = 20, 10_000
#: Calls per measured side; each cold call asks for a different `points`, so nothing is reused.
CALLS, QUICK_CALLS = 20, 6
#: Reports per epoch: epochs 0..19 over a run.
STEPS_PER_EPOCH = 500
#: Seconds the master's series loop may take to summarize the 20 runs.
SUMMARY_TIMEOUT = 300.0
#: A `points` above what a summary holds: the comparison reads every report.
RAW_POINTS = SUMMARY_POINTS + 1000


def fill(settings: Settings) -> list[int]:
    """Finished jobs and their metric rows straight into the tables, as a long training run leaves
    them; their ids."""
    engine = make_engine(settings.database_url)
    init_db(engine)
    rng = random.Random(0)
    ended = datetime.now(UTC) - timedelta(days=1)
    ids = list(range(1, JOBS + 1))
    with engine.begin() as conn:
        jobs, attempts = [], []
        for job_id in ids:
            lr = 10 ** rng.uniform(-4, -1)
            final = {"train_loss": 0.1 / job_id, "val_loss": 0.12 / job_id, "val_acc": 1 - 0.1 / job_id}
            spec = {**command_job("python", "train.py"), "hyperparameters": {"lr": lr, "depth": 4}}
            jobs.append(
                {
                    "id": job_id,
                    "queue": "cpu",
                    "status": "succeeded",
                    "spec": spec,
                    "created_at": ended - timedelta(hours=2),
                    "started_at": ended - timedelta(hours=2),
                    "finished_at": ended,
                    "metrics": final,
                    "project": "bench",
                    "tags": ["compare"],
                }
            )
            attempts.append({"job_id": job_id, "number": 1, "status": "succeeded", "info": {}})
        conn.execute(insert(Job), jobs)
        conn.execute(insert(JobAttempt), attempts)
        for job_id in ids:
            rows = []
            for step in range(REPORTS):
                decay = 1 / (1 + step / 500)
                values = {
                    "train_loss": decay + rng.gauss(0, 0.02),
                    "val_loss": 1.2 * decay + rng.gauss(0, 0.03),
                    "val_acc": 1 - decay + rng.gauss(0, 0.01),
                }
                rows.append(
                    {
                        "job_id": job_id,
                        "attempt": 1,
                        "kind": "metrics",
                        "step": step,
                        "epoch": step // STEPS_PER_EPOCH,
                        "values": values,
                        "ts": ended,
                    }
                )
            conn.execute(insert(JobMetric), rows)
    engine.dispose()
    return ids


def _timed(client: httpx.Client, path: str, params: dict) -> tuple[float, int]:
    begun = time.perf_counter()
    response = client.get(path, params=params)
    took = time.perf_counter() - begun
    if response.status_code != 200:
        raise RuntimeError(f"{path} refused: {response.status_code} {response.text[:200]}")
    return took, len(response.content)


def _wait_summarized(database: Path, ids: list[int]) -> float:
    """Seconds until the master's series loop has summarized every job (polling its database)."""
    begun = time.perf_counter()
    marks = ",".join("?" * len(ids))
    while time.perf_counter() - begun < SUMMARY_TIMEOUT:
        with sqlite3.connect(database) as conn:
            [(done,)] = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE summarized AND id IN ({marks})", ids)
        if done == len(ids):
            return time.perf_counter() - begun
        time.sleep(0.1)
    raise RuntimeError(f"the master summarized {done} of {len(ids)} jobs in {SUMMARY_TIMEOUT:.0f}s")


def _raw_sql(database: Path, ids: list[int]) -> float:
    """Every metric row of the 20 jobs read with plain sqlite3 (its JSON left unparsed)."""
    begun = time.perf_counter()
    with sqlite3.connect(database) as conn:
        marks = ",".join("?" * len(ids))
        conn.execute(
            f'SELECT job_id, step, "values" FROM job_metrics WHERE job_id IN ({marks})', ids
        ).fetchall()
    return time.perf_counter() - begun


def run(services: Services, quick: bool) -> list[Row]:
    settings = services.settings("compare")
    ids = fill(settings)
    database = Path(settings.database_url.removeprefix("sqlite:///"))
    calls = QUICK_CALLS if quick else CALLS
    jobs = ",".join(str(i) for i in ids)
    # The jobs are filled as ended and not summarized: the master's loop summarizes them as it does
    # after an upgrade; then a fresh master (nothing in memory) answers the first look.
    summarizing = services.master(settings)
    try:
        summarized = _wait_summarized(database, ids)
    finally:
        summarizing.stop()
    master = services.master(settings)
    try:
        with master.client(timeout=60) as api:
            first, size = _timed(api, "/compare", {"jobs": jobs})
            # Each a new `points` up to what a summary holds: drawn from the summaries, not the cache.
            cold = [_timed(api, "/compare", {"jobs": jobs, "points": 501 + i})[0] for i in range(calls)]
            warm = [_timed(api, "/compare", {"jobs": jobs})[0] for _ in range(calls)]
            every_report = [
                _timed(api, "/compare", {"jobs": jobs, "points": RAW_POINTS + i})[0] for i in range(calls)
            ]
            one_job = [
                _timed(api, f"/jobs/{ids[i % len(ids)]}/metrics", {"limit": 10_000})[0] for i in range(calls)
            ]
            answer = api.get("/compare", params={"jobs": jobs}).json()
    finally:
        master.stop()
    raw = [_raw_sql(database, ids) for _ in range(calls)]
    points = sum(len(s["x"]) for series in answer["metrics"].values() for s in series)
    base = median(ms(one_job))
    note = (
        f"{JOBS} jobs x {REPORTS:,} reports x 3 metrics; answer {size / 1024:.0f} KiB, {points:,} points drawn; "
        f"baseline: one job's GET /api/jobs/{{id}}/metrics?limit=10000 p50"
    )
    return [
        Row(
            f"11 compare, first call after start (n=1, {JOBS} jobs)",
            first * 1000,
            base,
            "ms",
            "< 500 ms",
            first < 0.5,
            f"{note}; from the series summaries, which the master's loop made in {summarized:.1f} s",
        ),
        Row(
            f"11 compare cold p50, nothing downsampled in memory (n={calls})",
            median(ms(cold)),
            base,
            "ms",
            "< 500 ms",
            median(ms(cold)) < 500,
            f"p95 {percentile(ms(cold), 95):.0f} ms; each call a new `points` (<= {SUMMARY_POINTS}), so "
            "every series is drawn again from its summary",
        ),
        Row(
            f"11 compare warm p50, the same comparison again (n={calls})",
            median(ms(warm)),
            base,
            "ms",
            "< 500 ms",
            median(ms(warm)) < 500,
            f"p95 {percentile(ms(warm), 95):.0f} ms; downsampled series kept per job until its metrics change",
        ),
        Row(
            f"11 compare p50, every report read (points > {SUMMARY_POINTS}, n={calls})",
            median(ms(every_report)),
            base,
            "ms",
            "report",
            None,
            f"p95 {percentile(ms(every_report), 95):.0f} ms; more points than a summary holds: all "
            f"{JOBS * REPORTS:,} rows read, parsed and downsampled; plain sqlite3 read of the same rows, "
            f"JSON unparsed: p50 {median(ms(raw)):.0f} ms",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS} calls a side, not {CALLS}")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trainfarm-bench-compare-"))
    started = time.monotonic()
    try:
        with Services(root) as services:
            rows = run(services, args.quick)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    render(rows, f"{time.strftime('%Y-%m-%d')} · {machine()} · {time.monotonic() - started:.0f} s")
    print(json.dumps([{"figure": r.figure, "ms": round(r.trainfarm, 1)} for r in rows]))


if __name__ == "__main__":
    main()
