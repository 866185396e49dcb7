"""Figure 9: one admission decision with a deep backlog: 10,000 waiting jobs of 50 users on 20
simulated nodes of 8 GPUs, most GPUs held; the real `Admitter.decide()` on a SQLite database, its
messages published by a real Dispatcher to the run's Redis (no worker takes them: only the decision
and its publish are timed)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import redis
from celery import Celery
from sqlalchemy import Engine, insert, select, update
from sqlmodel import col

from bench.farm_client import command_job
from bench.report import Row
from bench.services import Services
from bench.stats import median, ms, percentile
from master.db import init_db, make_engine
from master.dispatch import Dispatcher
from master.fairshare.admitter import Admitter
from master.fairshare.usage import UsageMeter
from master.models import Job, JobAttempt, Node
from master.nodes import merge_beats
from master.published_marks import PublishedMarks
from shared.celery_config import celery_config
from shared.settings import Settings
from shared.signing import Signer, master_private_key
from shared.status import JobStatus

WAITING, USERS, NODES, GPUS_PER_NODE = 10_000, 50, 20, 8
#: Held at the start: 150 of the 160 GPUs, so the first (cold) decision admits the other 10.
HELD = 150
ROUNDS, QUICK_ROUNDS = 300, 60


def _beat(node: str, now: float) -> dict[str, object]:
    """A node's `info` as master/nodes.py stores it: one worker's beat, merged."""
    beat = {
        "ts": now,
        "node": node,
        "worker": f"{node}#1",
        "queues": ["gpu"],
        "concurrency": GPUS_PER_NODE,
        "gpu_slots": list(range(GPUS_PER_NODE)),
        "pool": "prefork",
        "running": [],
        "paused": None,
    }
    return merge_beats([beat])


def fill(settings: Settings) -> None:
    """Nodes, held attempts and the backlog, bulk-inserted."""
    engine = make_engine(settings.database_url)
    init_db(engine)
    now = datetime.now(UTC)
    spec = command_job("true", queue="gpu")
    jobs, attempts = [], []
    for i in range(1, HELD + WAITING + 1):
        held = i <= HELD
        created = now - timedelta(seconds=HELD + WAITING - i + 60)
        status = JobStatus.RUNNING if held else JobStatus.QUEUED
        jobs.append(
            {
                "id": i,
                "queue": "gpu",
                "priority": 5,
                "status": status,
                "owner": f"user{i % USERS:02d}",
                "devices": 1,
                "spec": spec,
                "created_at": created,
                "started_at": created if held else None,
                "attempts": 1,
                "handbacks": 0,
                "cancel_requested": False,
                "progress": {},
                "metrics": {},
            }
        )
        attempts.append(
            {
                "job_id": i,
                "number": 1,
                "status": status,
                "created_at": created,
                "admitted_at": created if held else None,
                "enqueued_at": created if held else None,
                "started_at": created if held else None,
                "worker": f"node{i % NODES:02d}#1" if held else None,
                "last_event_seq": 1 if held else 0,
                "info": {},
            }
        )
    nodes = [
        {
            "name": f"node{n:02d}",
            "queues": ["gpu"],
            "info": _beat(f"node{n:02d}", now.timestamp()),
            "first_seen": now,
            "last_seen": now,
        }
        for n in range(NODES)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Node), nodes)
        conn.execute(insert(Job), jobs)
        conn.execute(insert(JobAttempt), attempts)
    engine.dispose()


def _oldest_held(engine: Engine) -> int:
    """The job of the attempt admitted longest ago that has not ended: the next to free its GPU."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(col(JobAttempt.job_id))
                .where(
                    col(JobAttempt.admitted_at).is_not(None),
                    col(JobAttempt.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                )
                .order_by(col(JobAttempt.admitted_at), col(JobAttempt.id))
                .limit(1)
            ).scalar_one()
        )


def _end(engine: Engine, job_id: int) -> None:
    """What the event consumer writes when an attempt succeeds."""
    stamp = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            update(Job).where(col(Job.id) == job_id).values(status=JobStatus.SUCCEEDED, finished_at=stamp)
        )
        conn.execute(
            update(JobAttempt)
            .where(col(JobAttempt.job_id) == job_id)
            .values(status=JobStatus.SUCCEEDED, finished_at=stamp)
        )


def run(services: Services, quick: bool) -> list[Row]:
    settings = services.settings("admission")
    fill(settings)
    engine = make_engine(settings.database_url)
    celery = Celery("bench-admission")
    celery.conf.update(celery_config(settings))
    broker = redis.Redis.from_url(settings.redis_connection_url())
    marks = PublishedMarks(engine)
    signer = Signer(master_private_key(settings))
    dispatcher = Dispatcher(
        celery, marks, signer, settings.message_max_age, broker, settings.node_offline_after
    )
    admitter = Admitter(engine, dispatcher, broker, settings, UsageMeter(settings.fairshare_half_life))
    try:
        first = admitter.decide()
        if first.admitted != NODES * GPUS_PER_NODE - HELD:
            raise RuntimeError(
                f"the cold decision admitted {first.admitted}, not {NODES * GPUS_PER_NODE - HELD}"
            )
        marks.flush()
        seconds: list[float] = []
        cpu = 0.0
        for _ in range(QUICK_ROUNDS if quick else ROUNDS):
            _end(engine, _oldest_held(engine))
            cpu_before = time.process_time()
            begun = time.perf_counter()
            outcome = admitter.decide()
            seconds.append(time.perf_counter() - begun)
            cpu += time.process_time() - cpu_before
            if outcome.admitted != 1:
                raise RuntimeError(f"a decision after one attempt ended admitted {outcome.admitted}")
            marks.flush()
        waiting = outcome.waiting
    finally:
        broker.close()
        engine.dispose()
    decision_ms = ms(seconds)
    n = len(seconds)
    cpu_ms = cpu / n * 1000
    return [
        Row(
            f"9 admission decision p99, {WAITING:,} waiting, {USERS} users, {NODES} nodes (n={n})",
            percentile(decision_ms, 99),
            None,
            "ms",
            "< 20 ms",
            percentile(decision_ms, 99) < 20,
            f"p50 {median(decision_ms):.1f} ms; each round one attempt ends and one decision admits the "
            f"next job (decide + admit UPDATE + signed publish to Redis); {waiting:,} still waiting; "
            f"cold first decision (full read, admits {first.admitted}) {first.seconds * 1000:.0f} ms",
        ),
        Row(
            "9 admission decision p50",
            median(decision_ms),
            None,
            "ms",
            "report",
            None,
        ),
        Row(
            "9 master CPU per admission decision",
            cpu_ms,
            None,
            "ms",
            "report",
            None,
            "time.process_time of the bench process over the timed decisions ÷ rounds",
        ),
    ]
