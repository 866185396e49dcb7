"""Figure 7: many live-log watchers. 200 SSE clients following 20 running jobs, next to 1 client
following one of the same jobs, in one run: print → client latency and the master's CPU.

The 20 jobs print `<n> <time>` lines at a steady pace (as training logs do) for the whole figure.
First one client follows job 0 for a window; then 200 clients, 10 a job, follow all of them for a
window of the same length. Latency is the arrival less the time the job printed into the line (one
machine, one clock), for lines printed inside the window, after the clients have caught up with
the history. Master CPU is psutil's user + system time of the uvicorn process over each window.

The clients are one asyncio process on raw streams (a lean HTTP/1.1 + chunked + SSE reader), so
that on a 2-core machine they take as little CPU from the master as they can; they also check that
every client saw its job's lines in order with none missing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
import psutil

from bench.farm_client import command_job, submit
from bench.report import Row
from bench.services import Services
from bench.stats import median, ms, percentile
from trainfarm.services.farm import WorkerProcess

JOBS, CLIENTS = 20, 200
#: Lines a second each job prints: a training loop logging every step or so.
RATE = 10.0
WINDOW, QUICK_WINDOW = 20.0, 8.0
#: The window is split into this many alternated halves: 1 client, 200 clients, 1, 200.
ROUNDS = 2
#: A client has caught up with its history once it has seen a line printed this recently (s).
CAUGHT_UP = 0.5
#: Seconds after all clients caught up before lines count.
SETTLE = 1.0


@dataclass
class Follower:
    """One SSE client's view of its job: latencies of lines printed in the window, and order."""

    job_id: int
    window: tuple[float, float] = (0.0, 0.0)
    latencies: list[float] = field(default_factory=list)
    expected: int | None = None
    misplaced: int = 0
    connected: bool = False
    #: Print time of the newest line seen: the follower has caught up once it is recent.
    latest: float = 0.0
    #: Seconds from opening the connections until all of them had caught up.
    catch_up: float = 0.0
    ended: bool = False

    def take(self, lines: list[str]) -> None:
        now = time.time()
        for line in lines:
            number, _, printed = line.partition(" ")
            if not number.isdigit():
                continue  # the worker's own "[trainfarm] ..." notes
            n = int(number)
            if self.expected is not None and n != self.expected:
                self.misplaced += 1
            self.expected = n + 1
            at = float(printed)
            self.latest = at
            if self.window[0] <= at < self.window[1]:
                self.latencies.append(now - at)


async def _follow(host: str, port: int, follower: Follower) -> None:
    """Read `GET /api/jobs/{id}/logs/stream` until cancelled: HTTP/1.1, chunked, SSE, by hand."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        path = f"/api/jobs/{follower.job_id}/logs/stream"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"stream of job {follower.job_id} answered {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # headers: the body is chunked
        follower.connected = True
        buffer, event = b"", b""
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                follower.ended = True
                return
            buffer += (await reader.readexactly(size + 2))[:-2]  # the chunk, less its CRLF
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                for line in frame.split(b"\n"):
                    if line.startswith(b"event: "):
                        event = line[7:]
                    elif line.startswith(b"data: ") and event == b"log":
                        follower.take(json.loads(line[6:])["lines"])
                    elif line.startswith(b"data: ") and event == b"end":
                        follower.ended = True
    finally:
        writer.close()


async def _watch(url: str, followers: list[Follower], window: float) -> tuple[float, float]:
    """Connect every follower, let them catch up, then count `window` seconds; returns the window."""
    host, port = url.removeprefix("http://").split(":")
    opened = time.monotonic()
    tasks = [asyncio.create_task(_follow(host, int(port), f)) for f in followers]
    try:
        deadline = time.monotonic() + 60
        while not all(f.connected for f in followers):
            failed = [t for t in tasks if t.done()]
            if failed:
                failed[0].result()  # raises what went wrong
                raise RuntimeError("an SSE stream ended before the figure began")
            if time.monotonic() > deadline:
                raise RuntimeError("SSE clients did not connect within 60 s")
            await asyncio.sleep(0.05)
        # The window opens once every client has caught up with its history and is following live.
        while not all(f.latest > time.time() - CAUGHT_UP for f in followers):
            if time.monotonic() > deadline + 60:
                raise RuntimeError("SSE clients did not catch up with their jobs within 60 s")
            await asyncio.sleep(0.05)
        for f in followers:
            f.catch_up = time.monotonic() - opened
        start = time.time() + SETTLE
        span = (start, start + window)
        for f in followers:
            f.window = span
        await asyncio.sleep(SETTLE + window + 1.0)  # + lines printed at the window's end arriving
        if any(t.done() for t in tasks):
            raise RuntimeError("an SSE stream ended during the figure")
        return span
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _cpu_during(
    process: psutil.Process, url: str, followers: list[Follower], window: float
) -> tuple[float, float]:
    """Shares of one core the master, and these clients, used while the followers were counted."""
    marks: dict[str, tuple[float, float, float]] = {}
    clients = psutil.Process()

    def mark() -> tuple[float, float, float]:
        server, own = process.cpu_times(), clients.cpu_times()
        return time.monotonic(), server.user + server.system, own.user + own.system

    async def measured() -> None:
        watch = asyncio.create_task(_watch(url, followers, window))
        while not followers[0].window[0]:
            if watch.done():
                await watch  # raises what went wrong
            await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, followers[0].window[0] - time.time()))
        marks["start"] = mark()
        await asyncio.sleep(window)
        marks["end"] = mark()
        await watch

    asyncio.run(measured())
    (t0, m0, c0), (t1, m1, c1) = marks["start"], marks["end"]
    return (m1 - m0) / (t1 - t0), (c1 - c0) / (t1 - t0)


def _summary(followers: list[Follower]) -> tuple[list[float], int]:
    latencies = [lat for f in followers for lat in f.latencies]
    return ms(latencies), sum(f.misplaced for f in followers)


def run(services: Services, quick: bool) -> list[Row]:
    window = QUICK_WINDOW if quick else WINDOW
    # Every client here is 127.0.0.1: the per-client cap would refuse all but the first 32.
    settings = services.settings("sse-fanout", sse_max_connections_per_client=CLIENTS + 10)
    master = services.master(settings)
    worker = WorkerProcess(
        settings.data_dir / "worker", settings, queues="cpu", concurrency=JOBS, node_name="bench-node"
    )
    services.run(worker)
    # Far longer than the figure takes (the jobs are cancelled at its end), however slowly 20 jobs
    # start on a busy 2-core machine.
    count = int(RATE * 900)
    try:
        with master.client(timeout=30) as api:
            argv = ["python", "-m", "bench.lines", "--count", str(count), "--rate", str(RATE)]
            jobs = [submit(api, command_job(*argv)) for _ in range(JOBS)]
            _wait_printing(api, jobs)
            process = psutil.Process(master.pid)
            # Alternated halves, so that what else the machine runs at the time weighs on both.
            one: list[Follower] = []
            many: list[Follower] = []
            cpus: dict[str, list[float]] = {"one": [], "many": [], "clients": []}
            for _ in range(ROUNDS):
                followers = [Follower(jobs[0])]
                cpus["one"].append(_cpu_during(process, master.url, followers, window / ROUNDS)[0])
                one += followers
                followers = [Follower(jobs[i % JOBS]) for i in range(CLIENTS)]
                server, clients = _cpu_during(process, master.url, followers, window / ROUNDS)
                cpus["many"].append(server)
                cpus["clients"].append(clients)
                many += followers
            cpu_one, cpu_many, cpu_clients = (median(cpus[k]) for k in ("one", "many", "clients"))
            catch_up = max(f.catch_up for f in many)
            history = count_lines(api, jobs[0])
            still_running = sum(api.get(f"/jobs/{j}").json()["status"] == "running" for j in jobs)
            for job_id in jobs:
                api.post(f"/jobs/{job_id}/cancel")
    finally:
        worker.stop()
        master.stop()
    if still_running != JOBS:
        raise RuntimeError(f"only {still_running} of {JOBS} jobs were still running at the end")
    lat_one, bad_one = _summary(one)
    lat_many, bad_many = _summary(many)
    p99_many, p99_one = percentile(lat_many, 99), percentile(lat_one, 99)
    return [
        Row(
            f"7 live log p99, print → client, {CLIENTS} SSE clients on {JOBS} jobs vs 1 client (n={len(lat_many)})",
            p99_many,
            p99_one,
            "ms",
            "< 250 ms",
            p99_many < 250,
            f"p50 {median(lat_many):.0f} ms vs {median(lat_one):.0f} ms; {JOBS} jobs print {RATE:.0f} lines/s "
            f"each; baseline: 1 client on one of the same running jobs; {ROUNDS} alternated windows of "
            f"{window / ROUNDS:.0f} s each",
        ),
        Row(
            f"7 master CPU, {CLIENTS} SSE clients on {JOBS} jobs vs 1 client",
            cpu_many * 100,
            cpu_one * 100,
            "% core",
            "< 50% of a core",
            cpu_many < 0.5,
            "psutil user+system of the uvicorn process over the window; one XREAD for all streams "
            f"(master/log_hub.py); the 200 clients' own process used {cpu_clients * 100:.0f}% of a core",
        ),
        Row(
            f"7 {CLIENTS} SSE clients opened together: until all follow live",
            catch_up * 1000,
            None,
            "ms",
            "report",
            None,
            f"each reads its job's history first (~{history:,} lines a job by the last round), history "
            "reads 16 at a time",
        ),
        Row(
            f"7 live log lines missing or out of order, {CLIENTS} + 1 clients",
            bad_many + bad_one,
            None,
            "",
            "0",
            bad_many + bad_one == 0,
        ),
    ]


def _wait_printing(api: httpx.Client, jobs: list[int], timeout: float = 120) -> None:
    """Until every job is running and has printed: the figure needs all 20 logging at once."""
    deadline = time.monotonic() + timeout
    pending = set(jobs)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = api.get(f"/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running"):
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
            if (
                job["status"] == "running"
                and api.get(f"/jobs/{job_id}/logs", params={"limit": 1}).json()["lines"]
            ):
                pending.discard(job_id)
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"jobs {sorted(pending)} were not running within {timeout:.0f} s")


def count_lines(api: httpx.Client, job_id: int) -> int:
    page = api.get(f"/jobs/{job_id}/logs", params={"limit": 100_000}).json()
    return len(page["lines"])
