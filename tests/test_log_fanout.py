"""Many watchers of live logs: followers of a job share one Redis reader, each still gets every line in
order and the `end`, a slow one holds up nobody, and a client has a cap on open streams.

The first tests are the fan-out's decisions, without services; then the hub over a real Redis; then
the whole path: a real master, Redis and worker, and many SSE clients."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from master.api.logs import _history
from master.connection_cap import ConnectionCap
from master.log_fanout import GONE, NOTHING, Fanout, Subscription
from master.log_hub import LogHub
from master.logs import LogReader
from shared.status import JobStatus
from shared.streams import LogPosition, log_key
from tests.conftest import log_texts, wait_for
from trainfarm.services.farm import MasterProcess

PY = sys.executable


def entry(attempt: int, first: int, *lines: str) -> tuple[bytes, dict]:
    return f"{attempt}-{first}".encode(), {b"lines": "\n".join(lines).encode()}


def texts(sub: Subscription) -> list[str]:
    return [line for item in sub.take() for line in item.batch.lines]


# The fan-out's decisions, no services ---------------------------------------------------------------


def test_every_follower_of_a_job_gets_each_new_entry_once_in_order() -> None:
    fanout = Fanout()
    a, b = fanout.add(1, LogPosition(0, 0)), fanout.add(1, LogPosition(0, 0))
    other = fanout.add(2, LogPosition(0, 0))
    assert fanout.deliver(1, [entry(1, 0, "l0", "l1"), entry(1, 2, "l2")]) == 2
    assert fanout.deliver(1, [entry(1, 3, "l3")]) == 1
    assert texts(a) == texts(b) == ["l0", "l1", "l2", "l3"]
    assert texts(other) == [] and texts(a) == []
    assert fanout.followers == 3 and fanout.jobs == 2


def test_entries_at_or_before_the_cursor_are_not_handed_out_again() -> None:
    fanout = Fanout()
    sub = fanout.add(1, LogPosition(1, 5))  # the stream's last entry when the job was first followed
    fanout.deliver(1, [entry(1, 0, "old"), entry(1, 5, "also old"), entry(1, 6, "new"), entry(2, 0, "next")])
    assert texts(sub) == ["new", "next"]
    assert fanout.cursors() == {1: LogPosition(2, 0)}
    fanout.deliver(1, [entry(1, 6, "new")])  # a read that was out while the job was followed anew
    assert texts(sub) == []


def test_a_follower_that_falls_behind_is_dropped_to_lagged_without_touching_the_others() -> None:
    fanout = Fanout(buffer_bytes=100)
    slow, fast = fanout.add(1, LogPosition(0, 0)), fanout.add(1, LogPosition(0, 0))
    for i in range(10):
        fanout.deliver(1, [entry(1, i, "x" * 29)])  # 30 bytes each
        assert len(texts(fast)) == 1  # the fast one takes as it goes
    assert slow.lagged and slow.pending and texts(slow) == []  # emptied, not grown: memory stays bounded
    fanout.deliver(1, [entry(1, 10, "after")])
    assert texts(slow) == []  # nothing queued until it has re-read from its position
    # It re-reads from storage through the newest entry handed out; the queue has what follows.
    assert slow.resync() == LogPosition(1, 10)
    fanout.deliver(1, [entry(1, 11, "again")])
    assert texts(slow) == ["again"] and not slow.lagged


def test_a_follower_of_a_stream_with_no_entries_yet_re_reads_without_a_bound() -> None:
    sub = Fanout().add(1, NOTHING)
    assert sub.resync() is None


def test_one_entry_larger_than_the_buffer_still_reaches_a_follower_that_keeps_up() -> None:
    fanout = Fanout(buffer_bytes=10)
    sub = fanout.add(1, LogPosition(0, 0))
    fanout.deliver(1, [entry(1, 0, "y" * 100)])
    assert texts(sub) == ["y" * 100] and not sub.lagged


def test_a_job_ends_for_its_followers_only_when_finished_after_it_was_seen_terminal() -> None:
    fanout = Fanout()
    running, done, gone = (fanout.add(j, LogPosition(0, 0)) for j in (1, 2, 3))
    fanout.saw_statuses([1, 2, 3], {1: JobStatus.RUNNING, 2: JobStatus.SUCCEEDED})
    assert fanout.ending() == [2, 3]
    assert done.ended is None  # seen terminal, but its stream is not drained yet
    fanout.finish(2)
    fanout.finish(3)
    assert (running.ended, done.ended, gone.ended) == (None, "succeeded", GONE)
    assert fanout.jobs == 1 and fanout.ending() == []


def test_the_last_follower_leaving_stops_the_reading_of_its_job() -> None:
    fanout = Fanout()
    a, b = fanout.add(1, LogPosition(0, 0)), fanout.add(1, LogPosition(0, 0))
    fanout.remove(a)
    assert fanout.follows(1)
    fanout.remove(b)
    fanout.remove(b)  # twice is harmless
    assert not fanout.follows(1) and fanout.cursors() == {}
    assert fanout.deliver(1, [entry(1, 0, "late")]) == 0


def test_a_waiting_follower_wakes_for_an_entry_and_times_out_without_one() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        fanout = Fanout()
        sub = fanout.add(1, LogPosition(0, 0))
        quiet = await sub.wait(0.01)
        asyncio.get_running_loop().call_later(0.01, fanout.deliver, 1, [entry(1, 0, "x")])
        woke = await sub.wait(5)
        sub.take()
        fanout.close()
        closed = await sub.wait(5) and sub.closed
        return quiet, woke, closed

    assert asyncio.run(scenario()) == (False, True, True)


def test_connection_cap_counts_per_key() -> None:
    cap = ConnectionCap(2)
    assert cap.acquire("a") and cap.acquire("a") and not cap.acquire("a")
    assert cap.acquire("b")
    cap.release("a")
    assert cap.acquire("a") and not cap.acquire("a")
    cap.release("a")
    cap.release("a")
    cap.release("b")
    assert cap.total == 0 and cap.held("a") == 0


# The hub over a real Redis -------------------------------------------------------------------------


def drain(subs: list[Subscription], got: list[list[str]]) -> None:
    for lines, sub in zip(got, subs, strict=True):
        lines += [line for item in sub.take() for line in item.batch.lines]


async def wait_all(subs: list[Subscription]) -> None:
    await asyncio.wait_for(asyncio.gather(*(s.wait(60) for s in subs)), 10)


def test_hub_fans_one_xread_out_to_many_followers_and_ends_after_the_last_line(redis_server) -> None:
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()
    status = {"value": JobStatus.RUNNING}

    async def scenario() -> tuple[list[list[str]], list[str | None]]:
        reader, waker = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
        hub = LogHub(reader, waker, lambda ids: {i: status["value"] for i in ids})
        await hub.start()
        await waker.xadd(log_key(7), {"lines": "before"}, id="1-0")
        subs = [await hub.subscribe(7) for _ in range(20)]
        assert hub.fanout.followers == 20 and hub.fanout.jobs == 1
        got: list[list[str]] = [[] for _ in subs]
        for i in range(1, 51):
            await waker.xadd(log_key(7), {"lines": f"line {i}"}, id=f"1-{i}")
        while any(len(lines) < 50 for lines in got):
            await wait_all(subs)
            drain(subs, got)
        await waker.xadd(log_key(7), {"lines": "last"}, id="2-0")
        status["value"] = JobStatus.SUCCEEDED
        while any(s.ended is None for s in subs):
            await wait_all(subs)
            drain(subs, got)
        drain(subs, got)
        assert hub.fanout.jobs == 0
        await hub.stop()
        await waker.aclose()
        return got, [s.ended for s in subs]

    got, ended = asyncio.run(scenario())
    expected = [f"line {i}" for i in range(1, 51)] + ["last"]
    assert all(lines == expected for lines in got), got[0]
    assert ended == ["succeeded"] * 20


def test_hub_wakes_from_its_blocking_read_for_a_newly_followed_job(redis_server) -> None:
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()

    async def scenario() -> list[str]:
        # Reads that block for a minute: job 8's line must come long before, by a wake-up.
        reader = aioredis.Redis.from_url(url, socket_timeout=None)
        waker = aioredis.Redis.from_url(url)
        running = {"value": JobStatus.RUNNING}
        hub = LogHub(
            reader,
            waker,
            lambda ids: dict.fromkeys(ids, running["value"]),
            block_ms=60_000,
            status_interval=60,
        )
        await hub.start()
        first = await hub.subscribe(7)
        await waker.xadd(log_key(7), {"lines": "job 7"}, id="1-0")
        await wait_all([first])
        assert hub.readers == 1
        await asyncio.sleep(0.2)  # the hub is back in its XREAD, on job 7 alone
        newcomer = await hub.subscribe(8)
        await waker.xadd(log_key(8), {"lines": "job 8"}, id="1-0")
        await wait_all([newcomer])
        lines = [line for item in newcomer.take() for line in item.batch.lines]
        await hub.stop()
        assert first.closed and newcomer.closed  # the master stopping closes every stream
        await waker.aclose()
        return lines

    assert asyncio.run(scenario()) == ["job 8"]


def test_lines_keep_flowing_while_the_status_read_fails_and_the_end_follows_its_return(redis_server) -> None:
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()
    database_up = {"value": False}

    def statuses(ids: object) -> dict[int, JobStatus]:
        if not database_up["value"]:
            raise ConnectionError("database unreachable")  # the injected fault
        return {4: JobStatus.SUCCEEDED}

    async def scenario() -> tuple[list[str], str | None]:
        waker = aioredis.Redis.from_url(url)
        hub = LogHub(aioredis.Redis.from_url(url), waker, statuses, status_interval=0.05)
        await hub.start()
        sub = await hub.subscribe(4)
        await waker.xadd(log_key(4), {"lines": "while the database is away"}, id="1-0")
        await wait_all([sub])
        got = [line for item in sub.take() for line in item.batch.lines]
        assert sub.ended is None
        database_up["value"] = True
        while sub.ended is None:
            await wait_all([sub])
        await hub.stop()
        await waker.aclose()
        return got, sub.ended

    assert asyncio.run(scenario()) == (["while the database is away"], "succeeded")


def test_followers_arriving_together_share_one_look_up_of_a_new_job(redis_server) -> None:
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()

    async def scenario() -> tuple[int, list[str]]:
        # A pool far smaller than the crowd: one look-up each would run out of connections.
        waker = aioredis.Redis.from_url(url, max_connections=4)
        reader = aioredis.Redis.from_url(url)
        hub = LogHub(reader, waker, lambda ids: dict.fromkeys(ids, JobStatus.RUNNING))
        await hub.start()
        await waker.xadd(log_key(9), {"lines": "history"}, id="1-0")
        subs = await asyncio.gather(*(hub.subscribe(9) for _ in range(150)))
        await waker.xadd(log_key(9), {"lines": "live"}, id="1-1")
        await wait_all(subs)
        followers = hub.fanout.followers
        lines = [line for sub in subs for item in sub.take() for line in item.batch.lines]
        await hub.stop()
        await waker.aclose()
        return followers, lines

    followers, lines = asyncio.run(scenario())
    assert followers == 150 and lines == ["live"] * 150  # from the stream's end at subscription on


def test_catching_up_stops_where_the_queue_begins_instead_of_chasing_the_live_end(redis_server) -> None:
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()

    async def scenario() -> tuple[LogPosition, LogPosition]:
        client = aioredis.Redis.from_url(url)
        pipe = client.pipeline(transaction=False)
        for i in range(3000):
            pipe.xadd(log_key(5), {"lines": f"line {i}"}, id=f"1-{i}")
        await pipe.execute()
        slots = SimpleNamespace(history_slots=asyncio.Semaphore())
        state: Any = SimpleNamespace(logs=LogReader(client, None), hub=slots)  # type: ignore[arg-type]
        # A read takes up to 1,000 entries; the queue holds what follows 1-1499, so reading stops after
        # the read that passes it, well before the end.
        bounded = [p async for _, p in _history(state, 5, [], LogPosition(1, 9), until=LogPosition(1, 1499))]
        whole = [p async for _, p in _history(state, 5, [], LogPosition(1, 9))]
        await client.aclose()
        return bounded[-1], whole[-1]

    bounded, whole = asyncio.run(scenario())
    assert LogPosition(1, 1499) <= bounded < LogPosition(1, 2999) and whole == LogPosition(1, 2999)


# The whole path: master, Redis, a worker, many SSE clients ----------------------------------------


def gated_job(gate: Path, before: int, after: int) -> str:
    """A job that prints `before` numbered lines, waits for `gate` to exist, then prints `after` more."""
    return textwrap.dedent(
        f"""
        import os, time
        for i in range({before}):
            print(f"line {{i}}", flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.05)
        for i in range({before}, {before + after}):
            print(f"line {{i}}", flush=True)
            if i % 100 == 0:
                time.sleep(0.05)
        """
    )


def submit(api: httpx.Client, code: str) -> int:
    response = api.post("/jobs", json={"command": [PY, "-c", code], "queue": "cpu", "max_retries": 0})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def read_sse(
    base_url: str,
    headers_: dict[str, str],
    job_id: int,
    last_event_id: str | None = None,
    stop_after_line: str | None = None,
) -> tuple[list[str], list[str], dict | None]:
    """(program lines, event ids, the `end` data or None) of one SSE connection, read to its `end`
    or until the line `stop_after_line` has arrived (then the connection is closed)."""
    headers = {**headers_, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    lines: list[str] = []
    ids: list[str] = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        url = f"/jobs/{job_id}/logs/stream"
        with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, response.read()
            event = ""
            for raw in response.iter_lines():
                if raw.startswith("event: "):
                    event = raw[7:]
                elif raw.startswith("id: "):
                    ids.append(raw[4:])
                elif raw.startswith("data: "):
                    data = json.loads(raw[6:])
                    if event == "end":
                        return lines, ids, data
                    lines += [t for t in data["lines"] if not t.startswith("[trainfarm]")]
                    if stop_after_line is not None and stop_after_line in lines:
                        return lines, ids, None
    raise AssertionError("the stream closed without an end event")


def metric(master: MasterProcess, name: str) -> float:
    auth = {"Authorization": f"Bearer {master.credentials.metrics_token}"}
    text = httpx.get(f"{master.url}/metrics", timeout=10, headers=auth).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def xread_connections(url: str) -> int:
    """Connections to the test's redis-server whose last command was a (blocking) XREAD."""
    return sum(1 for client in redis.Redis.from_url(url).client_list() if client.get("cmd") == "xread")


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "go"
    yield path
    path.touch()  # a job still waiting ends on its own


# The database plays no part here (worker, Redis and S3 do): once, on SQLite.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_thirty_followers_share_one_reader_and_all_get_every_line_and_the_end(
    api, master, worker, settings, gate
) -> None:
    before, after = 200, 2000
    job_id = submit(api, gated_job(gate, before, after))
    base = f"{master.url}/api"
    with ThreadPoolExecutor(30) as pool:
        futures = [pool.submit(read_sse, base, dict(api.headers), job_id) for _ in range(30)]
        # Every follower subscribed (some may still read the first part); the job waits at its gate.
        wait_for(lambda: metric(master, "trainfarm_log_followers") == 30, 60, what="30 followers")
        assert metric(master, "trainfarm_log_readers") == 1
        assert metric(master, "trainfarm_log_followed_jobs") == 1
        # The hub's connection shows `xread` from its first read on; then it is the only one, where
        # each follower used to hold one of its own.
        wait_for(lambda: xread_connections(settings.redis_url) >= 1, 30, what="the hub's XREAD")
        assert xread_connections(settings.redis_url) == 1
        gate.touch()
        results = [f.result(timeout=120) for f in futures]
    expected = [f"line {i}" for i in range(before + after)]
    for lines, _, end in results:
        assert lines == expected
        assert end == {"status": "succeeded"}
    wait_for(lambda: metric(master, "trainfarm_log_followers") == 0, 30, what="followers gone")
    assert metric(master, "trainfarm_log_readers") == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_reconnect_with_last_event_id_gets_no_duplicate_and_no_gap(api, master, worker, gate) -> None:
    before, after = 1000, 1000
    job_id = submit(api, gated_job(gate, before, after))
    base = f"{master.url}/api"
    # Leave mid-job, live (the job waits at its gate), then come back after more was printed.
    first, ids, end = read_sse(base, dict(api.headers), job_id, stop_after_line=f"line {before - 1}")
    assert end is None and first == [f"line {i}" for i in range(before)]
    gate.touch()
    wait_for(
        lambda: api.get(f"/jobs/{job_id}/logs", params={"after": ids[-1]}).json()["lines"],
        60,
        what="lines printed after the gate",
    )
    rest, _, end = read_sse(base, dict(api.headers), job_id, last_event_id=ids[-1])
    assert first + rest == [f"line {i}" for i in range(before + after)]
    assert end == {"status": "succeeded"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_follower_stays_through_a_redis_restart_and_gets_every_line(
    api, master, worker, redis_server, gate
) -> None:
    before, after = 200, 1000
    job_id = submit(api, gated_job(gate, before, after))
    with ThreadPoolExecutor(1) as pool:
        follower = pool.submit(read_sse, f"{master.url}/api", dict(api.headers), job_id)
        wait_for(lambda: metric(master, "trainfarm_log_followers") == 1, 60, what="the follower")
        wait_for(lambda: f"line {before - 1}" in log_texts(api, job_id), 60, what="the first part")
        redis_server.restart()  # SIGTERM: Redis writes its append-only file, then comes back with it
        gate.touch()
        lines, _, end = follower.result(timeout=150)
    assert lines == [f"line {i}" for i in range(before + after)]
    assert end == {"status": "succeeded"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_slow_follower_holds_up_nobody_and_still_gets_every_line(api, master, worker, gate) -> None:
    # 60 MB of log, far past a follower's queue (16 MiB) and the socket buffers between it and the master.
    count, width = 500_000, 120
    code = textwrap.dedent(
        f"""
        import os, sys, time
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.05)
        pad = "x" * {width}
        out = sys.stdout
        for i in range({count}):
            out.write(f"line {{i}} {{pad}}\\n")
        """
    )
    job_id = submit(api, code)
    base = f"{master.url}/api"
    slow_lines: list[str] = []
    slow_end: list[dict] = []
    may_read = threading.Event()

    def slow() -> None:
        with (
            master.client(timeout=120) as client,
            client.stream("GET", f"/jobs/{job_id}/logs/stream") as response,
        ):
            event, chunks = "", response.iter_lines()
            may_read.wait(180)  # connected, then reads nothing until the fast one is done
            for raw in chunks:
                if raw.startswith("event: "):
                    event = raw[7:]
                elif raw.startswith("data: ") and event == "end":
                    slow_end.append(json.loads(raw[6:]))
                    return
                elif raw.startswith("data: "):
                    slow_lines.extend(json.loads(raw[6:])["lines"])

    with ThreadPoolExecutor(2) as pool:
        slow_done = pool.submit(slow)
        fast_done = pool.submit(read_sse, base, dict(api.headers), job_id)
        wait_for(lambda: metric(master, "trainfarm_log_followers") == 2, 60, what="2 followers")
        gate.touch()
        fast_lines, _, fast_end = fast_done.result(timeout=170)
        may_read.set()
        slow_done.result(timeout=170)
    expected = [f"line {i} {'x' * width}" for i in range(count)]
    assert fast_lines == expected and fast_end == {"status": "succeeded"}
    assert [t for t in slow_lines if not t.startswith("[trainfarm]")] == expected
    assert slow_end == [{"status": "succeeded"}]
    # The path this test is for; not exactly 1: under load the "fast" reader may fall behind too.
    assert metric(master, "trainfarm_log_followers_lagged_total") >= 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_thirty_third_stream_of_one_client_is_refused_with_429(api, master) -> None:
    # No worker: the job stays queued, so its streams stay open.
    job_id = submit(api, "print('never runs')")
    url = f"/jobs/{job_id}/logs/stream"
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    with (
        master.client(timeout=30, limits=limits) as client,
        ExitStack() as open_,
    ):
        for _ in range(32):
            assert open_.enter_context(client.stream("GET", url)).status_code == 200
        refused = client.get(url)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        body = refused.json()
        assert body["error"] == "TooManyConnections" and "32 live-log streams" in body["message"]
        assert metric(master, "trainfarm_log_streams_refused_total") == 1
        assert client.get(f"/jobs/{job_id}/logs").status_code == 200  # plain reads are not capped
        open_.close()  # all 32 go; the slots come back as the master sees them close

        def opens() -> bool:
            with client.stream("GET", url) as response:
                return response.status_code == 200

        wait_for(opens, 30, what="a stream to open again")
