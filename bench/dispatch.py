"""Figure 1: from a submission's HTTP 201 (through admission, as every submission goes, decided in
its request) to its attempt running on an idle worker, next to a bare Celery task on the same broker; and from
submission to the first line a job prints, seen over SSE. Measured with the task queues on Redis and,
where rabbitmq-server is installed, again with them on RabbitMQ, in the same run."""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field

import httpx
import redis
from celery import Celery

from bench import baseline_celery
from bench.farm_client import command_job, sse_lines, submit, timestamp, wait_end
from bench.report import Row
from bench.services import PythonProcess, Services
from bench.stats import median, ms, percentile
from shared.celery_config import celery_config
from shared.schemas import JobSpec, TaskMessage
from shared.settings import Settings
from shared.signing import Signer, master_private_key
from trainfarm.services.rabbitmq import RabbitMQServer, unavailable_reason

#: Jobs (and bare tasks) per side; the first few of each warm up connections and are not counted.
JOBS, QUICK_JOBS, WARMUP = 200, 30, 3
FIRST_LINE_JOBS = 20
#: After a job ends the worker acknowledges and goes back to waiting; give it that moment.
SETTLE = 0.05


def _farm_once(api: httpx.Client) -> tuple[float, float]:
    """(201 → running, POST sent → running)."""
    sent = time.time()
    job_id = submit(api, command_job("true"))
    acknowledged = time.time()
    job = wait_end(api, job_id)
    if job["status"] != "succeeded" or not job["started_at"]:
        raise RuntimeError(f"dispatch job {job_id} ended {job['status']}: {job['error']}")
    # The worker's own time of its first `started` event, as the master recorded it: no poll granularity.
    started = timestamp(job["started_at"])
    return started - acknowledged, started - sent


def _celery_once(publisher: Celery, client: redis.Redis) -> tuple[float, float]:
    """(send_task returned → started, send_task called → started). On RabbitMQ send_task returns
    only once the broker confirms the message, and the worker may have begun by then: the first
    can be negative there, the second is the one to set beside Redis."""
    key = f"bench:started:{uuid.uuid4().hex}"
    called = time.time()
    publisher.send_task(baseline_celery.TASK, args=[key], queue=baseline_celery.QUEUE)
    sent = time.time()
    popped = client.blpop([key], timeout=30)
    if popped is None:
        raise RuntimeError("the bare Celery task did not run within 30 s")
    return float(popped[1]) - sent, float(popped[1]) - called


def _celery_signed_once(publisher: Celery, client: redis.Redis, signer: Signer) -> tuple[float, float]:
    """The bare task again, its argument a job's message signed as the master signs it and verified
    by the task before it records its start: (send_task → verified and started, signing alone).
    Like the bare figure, the clock starts once the message is sent, as the farm's 201 leaves once
    its signed message is; what signing costs the sender is the second value."""
    key = f"bench-started-{uuid.uuid4().hex}"
    message = TaskMessage(job_id=1, attempt=1, spec=JobSpec(name=key, command=["true"], queue="cpu"))
    begun = time.perf_counter()
    signed = signer.sign(message).model_dump()
    signing = time.perf_counter() - begun
    publisher.send_task(baseline_celery.SIGNED_TASK, kwargs={"message": signed}, queue=baseline_celery.QUEUE)
    sent = time.time()
    popped = client.blpop([key], timeout=30)
    if popped is None:
        raise RuntimeError("the signed bare Celery task did not run within 30 s")
    return float(popped[1]) - sent, signing


def _first_line(api: httpx.Client) -> float:
    """Submission to the arrival, over SSE, of the line a job prints at once."""
    begun = time.time()
    job_id = submit(api, command_job("echo", "first-line"))
    for lines in sse_lines(api, job_id):
        if "first-line" in lines:
            arrived = time.time()
            break
    else:
        raise RuntimeError(f"job {job_id}'s log ended without its line")
    wait_end(api, job_id)
    time.sleep(SETTLE)
    return arrived - begun


def _baseline_worker(services: Services, settings: Settings) -> PythonProcess:
    argv = [
        "-m",
        "celery",
        "-A",
        "bench.baseline_celery",
        "worker",
        "-Q",
        baseline_celery.QUEUE,
        "-c",
        "1",
        "-P",
        "prefork",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "info",
    ]

    def ready(proc: PythonProcess) -> bool:
        return proc.log_path.exists() and "ready." in proc.log_path.read_text(errors="replace")

    proc = PythonProcess(settings.data_dir / "baseline", "celery-baseline", argv, settings, ready)
    services.run(proc)
    return proc


@dataclass
class Samples:
    """One broker's measurements, in seconds."""

    farm: list[float] = field(default_factory=list)
    farm_total: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    bare_from_call: list[float] = field(default_factory=list)
    bare_signed: list[float] = field(default_factory=list)
    signing: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)


def _measure(services: Services, settings: Settings, quick: bool) -> Samples:
    master = services.master(settings)
    procs = [master, services.worker(settings), _baseline_worker(services, settings)]
    publisher = Celery("bench-publisher")
    publisher.conf.update(celery_config(settings))
    client = redis.Redis.from_url(settings.redis_connection_url())
    signer = Signer(master_private_key(settings))  # the farm's own key, which its baseline worker trusts
    out = Samples()
    try:
        with master.client(timeout=30) as api:
            # Interleaved, one at a time, so both sides see the same machine at the same moments.
            for i in range(QUICK_JOBS if quick else JOBS):
                farm_s, total_s = _farm_once(api)
                time.sleep(SETTLE)
                bare_s, bare_call_s = _celery_once(publisher, client)
                time.sleep(SETTLE)
                signed_s, signing_s = _celery_signed_once(publisher, client, signer)
                time.sleep(SETTLE)
                if i >= WARMUP:
                    out.farm.append(farm_s)
                    out.farm_total.append(total_s)
                    out.bare.append(bare_s)
                    out.bare_from_call.append(bare_call_s)
                    out.bare_signed.append(signed_s)
                    out.signing.append(signing_s)
            out.first = [_first_line(api) for _ in range(FIRST_LINE_JOBS if not quick else 5)]
    finally:
        for proc in procs:
            proc.stop()
        client.close()
    return out


def run(services: Services, quick: bool) -> list[Row]:
    rows = _rows(_measure(services, services.settings("dispatch"), quick), "")
    reason = unavailable_reason()
    if reason is not None:
        print(f"dispatch on RabbitMQ not measured: {reason}", file=sys.stderr)
        return rows
    # The same farm and baseline with the task queues on RabbitMQ (events, logs and leases stay on
    # Redis), with the farm's own RabbitMQ settings: durable priority queues, publisher confirms.
    with RabbitMQServer(services.root / "rabbitmq") as broker:
        settings = services.settings("dispatch-rabbitmq", broker_url=broker.url)
        rows += _rows(_measure(services, settings, quick), " on RabbitMQ")
    return rows


def _rows(samples: Samples, broker: str) -> list[Row]:
    farm_ms, bare_ms, first_ms, signed_ms = (
        ms(samples.farm),
        ms(samples.bare),
        ms(samples.first),
        ms(samples.bare_signed),
    )
    signing_cost = median(signed_ms) - median(bare_ms)
    n = len(farm_ms)
    return [
        Row(
            f"1 dispatch p50{broker}: 201 → running, with admission (n={n})",
            median(farm_ms),
            median(bare_ms),
            "ms",
            "< 10 ms",
            median(farm_ms) < 10,
            f"every submission passes the admitter (idle capacity); baseline: bare Celery send_task → "
            f"task body starts, and the signed bare task below; POST sent → running "
            f"p50 {median(ms(samples.farm_total)):.1f} ms (the request runs the admission decision when no "
            "other is running, so the 201 leaves once the job is published; that decision is in this one); "
            f"bare task from the send_task call p50 {median(ms(samples.bare_from_call)):.2f} ms"
            + (
                " (with publisher confirms the 201 and send_task return after the broker has the "
                "message, and the worker may already have begun: compare the POST and call figures)"
                if broker
                else ""
            ),
        ),
        Row(
            f"1 dispatch p99{broker}: 201 → running, with admission (n={n})",
            percentile(farm_ms, 99),
            percentile(bare_ms, 99),
            "ms",
            "< 50 ms",
            percentile(farm_ms, 99) < 50,
        ),
        Row(
            f"1 dispatch p50 with signing{broker}: signed bare task (n={n})",
            median(signed_ms),
            median(bare_ms),
            "ms",
            "< 1 ms over unsigned",
            signing_cost < 1.0,
            f"verify and parse in the task: +{signing_cost:.2f} ms at p50; signing on the sender "
            f"{median(ms(samples.signing)):.3f} ms p50 (before the publish, so in POST → running only); "
            f"p99 {percentile(signed_ms, 99):.1f} vs {percentile(bare_ms, 99):.1f} ms; the farm's own "
            "figure above is signed too",
        ),
        Row(
            f"1 submit → first log line over SSE, p50{broker} (n={len(first_ms)})",
            median(first_ms),
            None,
            "ms",
            "report",
            None,
            f"p99 {percentile(first_ms, 99):.0f} ms; job `echo first-line`, client opens SSE after the 201",
        ),
    ]
