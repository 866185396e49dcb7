"""Figure 2: a job's printed lines to an SSE client — latency, sustained lines/s, nothing lost — next
to bare XADD → XREAD of the same lines on the same Redis."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
import redis

from bench.farm_client import command_job, sse_lines, submit, wait_end
from bench.report import Row
from bench.services import Services
from bench.stats import median, ms, percentile

#: Paced lines for latency: a job that logs steadily, as training does.
PACED_LINES, PACED_RATE = 2000, 500
BULK_LINES, QUICK_BULK_LINES = 1_000_000, 100_000


@dataclass
class Arrivals:
    """What a reader saw of lines `0 .. count-1`: each line's latency, and any out of place."""

    count: int
    latencies: list[float] = field(default_factory=list)
    expected: int = 0
    misplaced: int = 0
    first_print: float = 0.0
    last_arrival: float = 0.0

    def take(self, batch: Iterable[str]) -> None:
        now = time.time()
        for line in batch:
            number, _, printed = line.partition(" ")
            if not number.isdigit():
                continue  # the worker's own "[trainfarm] ..." notes
            n = int(number)
            if n != self.expected:
                self.misplaced += 1
            if n == 0:
                self.first_print = float(printed)
            self.expected = n + 1
            self.latencies.append(now - float(printed))
        self.last_arrival = now

    @property
    def done(self) -> bool:
        return self.expected >= self.count

    @property
    def lost_or_reordered(self) -> int:
        return self.misplaced + max(0, self.count - self.expected)

    @property
    def rate(self) -> float:
        return self.count / (self.last_arrival - self.first_print)


def _farm(api: httpx.Client, count: int, rate: float) -> Arrivals:
    argv = ["python", "-m", "bench.lines", "--count", str(count), "--rate", str(rate)]
    job_id = submit(api, command_job(*argv))
    seen = Arrivals(count)
    for batch in sse_lines(api, job_id, timeout=300):
        seen.take(batch)
    job = wait_end(api, job_id)
    if job["status"] != "succeeded":
        raise RuntimeError(f"log job {job_id} ended {job['status']}: {job['error']}")
    return seen


def _bare(url: str, count: int, rate: float) -> Arrivals:
    key = f"bench:lines:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(url)
    argv = [
        sys.executable,
        "-m",
        "bench.lines",
        "--count",
        str(count),
        "--rate",
        str(rate),
        "--xadd",
        url,
        key,
    ]
    producer = subprocess.Popen(argv)
    seen, last = Arrivals(count), "0-0"
    try:
        while not seen.done:
            response = client.xread({key: last}, count=10_000, block=1000)
            if not response:
                if producer.poll() is not None:
                    break
                continue
            entries = response[0][1]
            last = entries[-1][0]
            seen.take([fields[b"line"].decode() for _, fields in entries])
    finally:
        producer.wait(60)
        client.delete(key)
        client.close()
    return seen


def run(services: Services, quick: bool) -> list[Row]:
    settings = services.settings("logs")
    master, worker = services.master(settings), services.worker(settings)
    bulk = QUICK_BULK_LINES if quick else BULK_LINES
    paced = PACED_LINES // 2 if quick else PACED_LINES
    try:
        with master.client(timeout=30) as api:
            _farm(api, 10, 0)  # warm-up: the pool process connects on its first job
            farm_paced = _farm(api, paced, PACED_RATE)
            bare_paced = _bare(settings.redis_url, paced, PACED_RATE)
            farm_bulk = _farm(api, bulk, 0)
            bare_bulk = _bare(settings.redis_url, bulk, 0)
    finally:
        worker.stop()
        master.stop()
    fp, bp = ms(farm_paced.latencies), ms(bare_paced.latencies)
    bulk_p99 = percentile(ms(farm_bulk.latencies), 99)
    lost = farm_bulk.lost_or_reordered + farm_paced.lost_or_reordered
    return [
        Row(
            f"2 live log latency p99, print → SSE client ({paced} lines at {PACED_RATE}/s)",
            percentile(fp, 99),
            percentile(bp, 99),
            "ms",
            "< 250 ms",
            percentile(fp, 99) < 250,
            f"p50 {median(fp):.0f} ms vs {median(bp):.1f} ms; the worker batches lines for "
            f"{settings.log_flush_interval * 1000:.0f} ms; baseline: one XADD per line → XREAD BLOCK",
        ),
        Row(
            f"2 live log lines/s, one job, {bulk:,} lines",
            farm_bulk.rate,
            bare_bulk.rate,
            "lines/s",
            "≥ 50,000/s",
            farm_bulk.rate >= 50_000,
            f"print of line 0 → SSE arrival of the last; latency p99 at full speed {bulk_p99:.0f} ms; "
            "baseline: XADD per line, pipelined 100 a round trip",
        ),
        Row(
            f"2 live log lines lost or reordered ({bulk + paced:,} lines)",
            lost,
            bare_bulk.lost_or_reordered + bare_paced.lost_or_reordered,
            "",
            "0",
            lost == 0,
        ),
    ]
