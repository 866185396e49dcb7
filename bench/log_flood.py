"""Figure 8: one job prints 2.4 GB (40,000 lines of 60 KB) as fast as it can; Redis's memory is
sampled throughout and set against the bound the log limits promise, and jobs dispatched meanwhile
are timed against jobs dispatched without the flood, on the same farm in the same run."""

from __future__ import annotations

import threading
import time

import httpx
import redis

from bench.farm_client import command_job, submit, timestamp, wait_end
from bench.report import Row
from bench.services import Services
from bench.stats import median, ms, percentile
from shared.storage import ArtifactStore, make_s3_client
from trainfarm.services.farm import WorkerProcess

LINE_BYTES = 60_000
LINES, QUICK_LINES = 40_000, 8_000
#: Dispatch probes (`true` jobs, one at a time) without the flood, and at most this many during it.
PROBES, QUICK_PROBES = 30, 10
WARMUP = 3
#: Seconds between samples of Redis's used memory.
SAMPLE_SECONDS = 0.02
#: Headroom in the stated bound for Redis's own buffers (client query buffers, AOF buffer).
SLACK = 16 * 2**20
MB = 1e6


def flood_job(lines: int) -> dict:
    source = (
        "import sys\n"
        f"line = b'x' * {LINE_BYTES - 1} + b'\\n'\n"
        "out = sys.stdout.buffer\n"
        f"for _ in range({lines}):\n"
        "    out.write(line)\n"
    )
    return command_job("python", "-c", source)


class MemorySampler(threading.Thread):
    """Redis's used_memory every SAMPLE_SECONDS until stopped; the highest seen."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._redis = redis.Redis.from_url(url)
        self._done = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, int(self._redis.info("memory")["used_memory"]))
            self._done.wait(SAMPLE_SECONDS)

    def stop(self) -> int:
        self._done.set()
        self.join()
        self._redis.close()
        return self.peak


def _dispatch(api: httpx.Client) -> float:
    """201 → the attempt running (the worker's own `started` time), as figure 1 measures it."""
    job_id = submit(api, command_job("true"))
    acknowledged = time.time()
    job = wait_end(api, job_id)
    if job["status"] != "succeeded" or not job["started_at"]:
        raise RuntimeError(f"probe job {job_id} ended {job['status']}: {job['error']}")
    return timestamp(job["started_at"]) - acknowledged


def _running(api: httpx.Client, job_id: int) -> bool:
    return api.get(f"/jobs/{job_id}").json()["status"] == "running"


def run(services: Services, quick: bool) -> list[Row]:
    settings = services.settings("log_flood")
    master = services.master(settings)
    # Two slots: the flood and the probes run side by side on one worker, as on a shared node.
    worker = WorkerProcess(
        settings.data_dir / "worker", settings, queues="cpu", concurrency=2, node_name="bench-node"
    )
    services.run(worker)
    client = redis.Redis.from_url(settings.redis_url)
    lines, probes = (QUICK_LINES, QUICK_PROBES) if quick else (LINES, PROBES)
    calm: list[float] = []
    busy: list[float] = []
    try:
        with master.client(timeout=30) as api:
            for i in range(probes + WARMUP):
                latency = _dispatch(api)
                if i >= WARMUP:
                    calm.append(latency)
            time.sleep(0.5)  # the probes' streams and events settle
            before = int(client.info("memory")["used_memory"])
            peak_before = int(client.info("memory")["used_memory_peak"])
            sampler = MemorySampler(settings.redis_url)
            sampler.start()
            started = time.monotonic()
            flood = submit(api, flood_job(lines))
            deadline = time.monotonic() + 120
            while not _running(api, flood) and time.monotonic() < deadline:
                time.sleep(0.02)
            while len(busy) < probes and _running(api, flood):
                busy.append(_dispatch(api))
            job = wait_end(api, flood, timeout=900, interval=0.1)
            took = time.monotonic() - started
            sampled = sampler.stop()
            # Redis's own peak catches what falls between samples, when the flood set a new one.
            peak_after = int(client.info("memory")["used_memory_peak"])
            peak = peak_after if peak_after > peak_before else sampled
            after = int(client.info("memory")["used_memory"])
            if job["status"] != "succeeded":
                raise RuntimeError(f"flood job {flood} ended {job['status']}: {job['error']}")
            [attempt] = api.get(f"/jobs/{flood}").json()["attempt_list"]
            store = ArtifactStore(make_s3_client(settings), settings.s3_bucket)
            archived = store.stat(attempt["log_key"]).size
            tail = api.get(f"/jobs/{flood}/logs", params={"after": f"1-{lines - 2}", "limit": 3}).json()
    finally:
        worker.stop()
        master.stop()
        client.close()
    budget = settings.log_live_max_bytes
    # The stream within its budget, plus one flush's pipelined writes in Redis's query buffer.
    bound = before + 2 * budget + SLACK
    printed = lines * LINE_BYTES
    cut_ok = (
        bool(tail["lines"])
        and f"[line cut: {LINE_BYTES - 1:,} bytes, kept {settings.log_line_max_bytes:,}]"
        in tail["lines"][0]["text"]
    )
    calm_ms, busy_ms = ms(calm), ms(busy)
    return [
        Row(
            f"8 Redis used memory peak, one job printing {printed / 1e9:.1f} GB ({lines:,} lines of 60 KB)",
            peak / MB,
            before / MB,
            "MB",
            f"< {bound / MB:,.0f} MB",
            peak < bound,
            f"baseline: used memory before the flood; bound = before + 2 x log_live_max_bytes "
            f"({budget / 2**20:.0f} MiB: the stream, and one flush in the query buffer) + 16 MiB; "
            f"after the job {after / MB:,.0f} MB (stream expires {settings.log_archived_ttl} s after "
            f"the archive); issue 9 measured 2,463 MB peak, 2,293 MB after, without the limits",
        ),
        Row(
            f"8 dispatch p50 during the flood: 201 → running (n={len(busy)})",
            median(busy_ms),
            median(calm_ms),
            "ms",
            "< 25 ms (fig. 1)",
            median(busy_ms) < 25,
            f"baseline: the same probes before the flood, same farm (n={len(calm)}); p99 "
            f"{percentile(busy_ms, 99):.1f} ms vs {percentile(calm_ms, 99):.1f} ms; worker -c 2 on 2 cores",
        ),
        Row(
            "8 flood job: printed to archived",
            took,
            None,
            "s",
            "report",
            None,
            f"{printed / took / MB:,.0f} MB/s printed; archive {archived / MB:,.0f} MB "
            f"(lines cut to log_line_max_bytes with the marker: {'yes' if cut_ok else 'NO'})",
        ),
    ]
