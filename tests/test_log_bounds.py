"""Bounded logs: line length cut with a marker, a byte budget for each job's live Redis stream, an
expiry once a log is archived, live lines dropped (not the job) when Redis is full, and submissions
refused with 503 before Redis would refuse writes."""

from __future__ import annotations

import io
import random
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import redis

from master.logs import archive_lines, gap_note
from shared.events import parse_event
from shared.redis_memory import MemoryGauge, MemoryReading
from shared.settings import Settings
from shared.storage import ArtifactStore, make_s3_client
from shared.streams import EVENTS_KEY, EventBus, LiveBudget, LogBatch, LogPosition, LogStream, log_key
from tests.conftest import S3_ACCESS, S3_SECRET, wait_for, wait_status
from trainfarm.services import RedisServer
from trainfarm.services.farm import MasterProcess
from worker.loglines import cut, cut_marker, read_lines, split_lines
from worker.logpump import LogLimits, LogPump
from worker.reporter import AttemptReporter
from worker.uploads import archive_log, upload_tree

PY = sys.executable
MARK = "… [line cut:"


# --- fast unit tests: no services -------------------------------------------------------------


def _reader(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data), buffer_size=4096)


def test_lines_up_to_the_limit_are_kept_whole_longer_ones_cut_with_their_length():
    data = b"short\n" + b"x" * 10 + b"\n" + b"y" * 11 + b"\n" + b"z" * 25
    expected = [
        b"short\n",
        b"x" * 10 + b"\n",
        b"y" * 10 + cut_marker(11, 10) + b"\n",
        b"z" * 10 + cut_marker(25, 10),  # no newline at the end: the last line, cut all the same
    ]
    assert list(read_lines(_reader(data).readline, 10)) == expected
    assert list(split_lines([data], 10)) == expected
    assert cut_marker(61_440, 16_384) == " … [line cut: 61,440 bytes, kept 16,384]".encode()


def test_a_huge_line_without_newline_is_read_in_bounded_pieces():
    """Neither reader ever asks for, or builds, more than the kept part plus one skip chunk."""
    size = 50 * 1024 * 1024
    asked: list[int] = []
    reader = _reader(b"a" * size)

    def readline(n: int) -> bytes:
        asked.append(n)
        return reader.readline(n)

    [line] = list(read_lines(readline, 1000))
    assert line == b"a" * 1000 + cut_marker(size, 1000)
    assert max(asked) <= 1024 * 1024

    chunks = (b"b" * 65536 for _ in range(size // 65536))
    [piece] = list(split_lines(chunks, 1000))
    assert piece == b"b" * 1000 + cut_marker(size, 1000)


def test_both_readers_agree_with_cutting_whole_lines_however_the_stream_is_split():
    rng = random.Random(7)
    for _ in range(200):
        lines = [
            bytes(rng.choice(b"ab") for _ in range(rng.choice([0, 1, 5, 9, 10, 11, 40]))) for _ in range(8)
        ]
        data = b"\n".join(lines) + rng.choice([b"", b"\n"])
        whole = [cut(line, 10) for line in data.split(b"\n")]
        if data.endswith(b"\n"):
            whole.pop()
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data), 6)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert [line.rstrip(b"\n") for line in split_lines(chunks, 10)] == whole
        assert [line.rstrip(b"\n") for line in read_lines(_reader(data).readline, 10)] == whole


def test_live_budget_trims_oldest_first_and_always_keeps_the_newest():
    budget = LiveBudget(100)
    budget.add(LogPosition(1, 0), 40)
    budget.add(LogPosition(1, 10), 40)
    assert budget.trim_point() is None and budget.held == 80
    budget.add(LogPosition(1, 20), 40)
    assert budget.trim_point() == LogPosition(1, 10)  # entry 1-0 leaves
    assert budget.held == 80
    before = budget.snapshot()
    budget.add(LogPosition(1, 30), 500)  # alone over the limit: it stays, the others go
    assert budget.trim_point() == LogPosition(1, 30) and budget.held == 500
    budget.restore(before)  # that write never reached Redis: nor did its trim
    assert budget.held == 80 and budget.trim_point() is None
    budget.add(LogPosition(1, 40), 40)
    assert budget.trim_point() == LogPosition(1, 20)


def test_earlier_attempts_count_against_the_budget_and_leave_first():
    budget = LiveBudget(100)
    budget.add(LogPosition(0, 0), 90)  # what attempts before this one left in the stream
    budget.add(LogPosition(2, 0), 30)
    assert budget.trim_point() == LogPosition(2, 0)  # MINID 2-0: every entry of attempt 1 leaves


def test_gap_note_stands_for_lines_that_left_redis_before_their_archive():
    oldest = LogPosition(2, 500)
    note = gap_note(None, oldest)
    assert note is not None and (note.attempt, note.first) == (2, 499)
    assert note.lines[0].startswith("[trainfarm] 500 lines of attempt 2 are no longer in the live log")
    assert "[trainfarm] 400 lines" in gap_note(LogPosition(2, 99), oldest).lines[0]
    assert "[trainfarm] 500 lines" in gap_note(LogPosition(1, 99), oldest).lines[0]
    assert gap_note(LogPosition(2, 499), oldest) is None  # read up to it: nothing missing
    assert gap_note(LogPosition(2, 700), oldest) is None
    assert gap_note(None, LogPosition(2, 0)) is None
    assert gap_note(None, None) is None


def test_memory_reading_shares_of_maxmemory():
    assert MemoryReading(95, 100).above(0.9) and not MemoryReading(90, 100).above(0.9)
    assert not MemoryReading(10**12, 0).above(0.01)  # no maxmemory: never full


# --- against a real redis-server --------------------------------------------------------------


@pytest.fixture
def small_redis(tmp_path: Path):
    """A redis-server of its own with an 8 MiB maxmemory (noeviction), as the farm runs one."""
    with RedisServer(tmp_path / "small-redis", persistent=False, maxmemory=8 * 1024 * 1024) as server:
        yield server


def _fill(client: redis.Redis, fraction: float) -> None:
    """Fill Redis with plain keys until its used memory is above `fraction` of maxmemory."""
    limit = int(client.config_get("maxmemory")["maxmemory"])
    i = 0
    while int(client.info("memory")["used_memory"]) < fraction * limit:
        try:
            client.set(f"fill:{i}", b"f" * 16384)
        except redis.exceptions.OutOfMemoryError:
            return
        i += 1


def test_the_farm_redis_runs_with_maxmemory_and_noeviction(small_redis: RedisServer):
    client = redis.Redis.from_url(small_redis.url)
    config = client.config_get("maxmemory*")
    assert config["maxmemory"] == str(8 * 1024 * 1024) and config["maxmemory-policy"] == "noeviction"
    assert RedisServer(Path("unused")).maxmemory == Settings().redis_maxmemory > 0


def test_memory_gauge_reads_info_at_most_once_an_interval(small_redis: RedisServer):
    client = redis.Redis.from_url(small_redis.url)
    now = [0.0]
    gauge = MemoryGauge(client, interval=1.0, clock=lambda: now[0])
    first = gauge.read()
    client.set("big", b"x" * 1_000_000)
    assert gauge.read() == first  # within the interval: the kept reading
    now[0] = 1.5
    assert gauge.read().used > first.used + 900_000


def _pump(client: redis.Redis, tmp_path: Path, attempt: int = 1, **limits: float) -> LogPump:
    values = {"live_bytes": 256 * 1024, "file_bytes": 1 << 30, "memory_fraction": 0.95, **limits}
    return LogPump(
        LogStream(client, 200_000),
        7,
        attempt,
        tmp_path / f"attempt-{attempt}.log",
        0.01,
        LogLimits(**values),
    )


def test_a_flood_keeps_the_live_stream_within_its_budget_and_every_line_in_the_file(
    small_redis: RedisServer, tmp_path: Path
):
    client = redis.Redis.from_url(small_redis.url)
    pump = _pump(client, tmp_path)
    line = "L" * 1000
    for i in range(20_000):  # ~20 MB through a 256 KiB budget, on an 8 MiB Redis
        pump.write(f"{i:06d} {line}")
    pump.close()
    assert pump.dropped == 0
    stream_bytes = client.memory_usage(log_key(7), samples=0)
    assert stream_bytes < 256 * 1024 + 64 * 1024, stream_bytes
    entries = client.xrange(log_key(7), "-", "+")
    assert LogPosition.parse(entries[0][0].decode()).line > 0  # the oldest lines left Redis
    assert entries[-1][1][b"lines"].decode().split("\n")[-1].startswith("019999 ")
    kept = (tmp_path / "attempt-1.log").read_text().splitlines()
    assert kept == [f"{i:06d} {line}" for i in range(20_000)]


def test_a_later_attempt_trims_what_earlier_ones_left_and_removes_their_expiry(
    small_redis: RedisServer, tmp_path: Path
):
    client = redis.Redis.from_url(small_redis.url)
    first = _pump(client, tmp_path, attempt=1)
    for i in range(200):
        first.write(f"one {i} " + "a" * 1000)
    first.close()
    client.expire(log_key(7), 600)  # what archive_log does
    second = _pump(client, tmp_path, attempt=2)
    for i in range(1000):
        second.write(f"two {i} " + "b" * 1000)
    second.close()
    assert client.ttl(log_key(7)) == -1
    entries = client.xrange(log_key(7), "-", "+")
    assert {LogPosition.parse(e[0].decode()).attempt for e in entries} == {2}
    assert client.memory_usage(log_key(7), samples=0) < 256 * 1024 + 64 * 1024


@pytest.fixture
def store(s3_server) -> ArtifactStore:
    settings = Settings(
        s3_endpoint=s3_server.endpoint,
        s3_access_key=S3_ACCESS,
        s3_secret_key=S3_SECRET,
        s3_bucket="t-archive",
    )
    store = ArtifactStore(make_s3_client(settings), settings.s3_bucket)
    store.ensure_bucket()
    return store


def test_archived_logs_are_read_a_page_at_a_time(store: ArtifactStore, tmp_path: Path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(300_000)) + "last, no newline")
    key = store.put_file("logs/9/attempt-1.log", path).key
    assert archive_lines(store, key, 0, None, 3) == ["line 0", "line 1", "line 2"]
    assert archive_lines(store, key, 250_000, 250_002, 10) == ["line 250000", "line 250001"]
    assert archive_lines(store, key, 299_999, None, 10) == ["line 299999", "last, no newline"]
    assert archive_lines(store, key, 400_000, None, 10) == []


def test_archive_log_sets_the_stream_expiry(small_redis: RedisServer, store: ArtifactStore, tmp_path: Path):
    client = redis.Redis.from_url(small_redis.url)
    pump = _pump(client, tmp_path)
    pump.write("hello")
    pump.close()
    key = archive_log(store, LogStream(client, 1000), 7, 1, tmp_path / "attempt-1.log", 600)
    assert store.read_text(key) == "hello\n"
    assert 0 < client.ttl(log_key(7)) <= 600


def test_a_lost_attempt_archiving_late_leaves_the_next_attempts_stream_alone(
    small_redis: RedisServer, store: ArtifactStore, tmp_path: Path
):
    """Attempt 1 was declared lost and archives after attempt 2 began writing: no expiry, or
    attempt 2's live log would vanish mid-run (its one "keep" was its first write, before this)."""
    client = redis.Redis.from_url(small_redis.url)
    client.delete(log_key(8))
    stream = LogStream(client, 1000)
    late = tmp_path / "attempt-1.log"
    late.write_text("old\n")
    stream.append(8, [LogBatch(2, 0, ["attempt 2 runs"])])
    archive_log(store, stream, 8, 1, late, 600)
    assert client.ttl(log_key(8)) == -1
    archive_log(store, stream, 8, 2, late, 600)  # its own archive: now it may go
    assert 0 < client.ttl(log_key(8)) <= 600


def test_an_output_no_artifact_name_can_hold_is_left_out_with_a_note(
    redis_server: RedisServer, store: ArtifactStore, tmp_path: Path
):
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    output = tmp_path / "output"
    deep = output / ("d" * 200) / ("e" * 200) / ("f" * 200)
    deep.mkdir(parents=True)
    (deep / "model.pt").write_text("weights")
    (output / "small.txt").write_text("kept")
    notes: list[str] = []
    reporter = AttemptReporter(EventBus(client), 5, 1, "node-1")
    assert upload_tree(store, reporter, output, 5, note=notes.append) == 1
    assert store.read_text("artifacts/5/small.txt") == "kept"
    assert len(notes) == 1 and "not kept" in notes[0] and "512" in notes[0]
    [(_, fields)] = client.xrange(EVENTS_KEY)
    assert parse_event(fields[b"event"]).data.name == "small.txt"  # type: ignore[union-attr]


def test_the_log_file_is_capped_with_a_note_while_lines_still_go_live(
    small_redis: RedisServer, tmp_path: Path
):
    client = redis.Redis.from_url(small_redis.url)
    pump = _pump(client, tmp_path, file_bytes=64 * 1024)
    for i in range(200):
        pump.write(f"{i:03d} " + "c" * 995)  # 1000 bytes with the newline
    pump.close()
    kept = (tmp_path / "attempt-1.log").read_text().splitlines()
    assert len(kept) == 66 and kept[:65] == [f"{i:03d} " + "c" * 995 for i in range(65)]
    assert kept[65].startswith("[trainfarm] this attempt's log file reached its cap of 65,536 bytes")
    live = client.xrevrange(log_key(7), "+", "-", count=1)[0][1][b"lines"].decode().split("\n")
    assert live[-1].startswith("199 ")


# 2.0: the worker's own check never fires, so Redis itself refuses the writes (OOM).
@pytest.mark.parametrize("fraction", [0.5, 2.0], ids=["nearly-full", "out-of-memory"])
def test_a_full_redis_drops_live_lines_not_the_job(small_redis: RedisServer, tmp_path: Path, fraction: float):
    """Nearly full (the worker's own threshold) or refusing writes (OOM): lines are dropped live,
    counted and noted; the file keeps every one; small writes such as leases still work when the
    worker stopped at its threshold."""
    client = redis.Redis.from_url(small_redis.url)
    _fill(client, 0.999 if fraction > 1 else 0.7)
    pump = _pump(client, tmp_path, memory_fraction=fraction)
    for i in range(2000):
        pump.write(f"{i} " + "d" * 2000)
    pump.close()
    assert pump.dropped > 0
    kept = (tmp_path / "attempt-1.log").read_text().splitlines()
    assert [k for k in kept if not k.startswith("[trainfarm]")] == [f"{i} " + "d" * 2000 for i in range(2000)]
    assert any("live log lines are dropped for now" in k for k in kept)
    if fraction < 1.0:
        assert client.set("tf:lease:1-1", "holder", px=15_000)


# --- end to end: real master, worker, Redis and S3 --------------------------------------------


def _submit(api: httpx.Client, source: str) -> int:
    spec = {"command": [PY, "-c", textwrap.dedent(source)], "queue": "cpu", "max_retries": 0}
    response = api.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _log(api: httpx.Client, job_id: int) -> list[str]:
    return [
        line["text"] for line in api.get(f"/jobs/{job_id}/logs", params={"limit": 100_000}).json()["lines"]
    ]


# The database plays no part here (worker, Redis and S3 do): once, on SQLite.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_printing_long_lines_and_no_final_newline_gets_them_cut_with_the_marker(api, start_worker):
    start_worker(overrides={"log_line_max_bytes": 1024})
    job_id = _submit(
        api,
        """
        import sys
        print("before")
        print("x" * 100_000)
        print("after")
        sys.stdout.write("y" * 3_000_000)  # never ends its line
        """,
    )
    wait_status(api, job_id, {"succeeded"})
    lines = [t for t in _log(api, job_id) if not t.startswith("[trainfarm]")]
    assert lines == [
        "before",
        "x" * 1024 + " … [line cut: 100,000 bytes, kept 1,024]",
        "after",
        "y" * 1024 + " … [line cut: 3,000,000 bytes, kept 1,024]",
    ]


# The database plays no part here (worker, Redis and S3 do): once, on SQLite.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_over_its_live_budget_keeps_redis_small_while_the_archive_has_every_line(
    api, start_worker, settings
):
    budget = 256 * 1024
    start_worker(overrides={"log_live_max_bytes": budget})
    job_id = _submit(api, "for i in range(8000): print(f'{i:05d} ' + 'z' * 994)")  # ~8 MB
    wait_status(api, job_id, {"succeeded"})
    client = redis.Redis.from_url(settings.redis_url)
    assert client.memory_usage(log_key(job_id), samples=0) < budget + 64 * 1024
    oldest = LogPosition.parse(client.xrange(log_key(job_id), "-", "+", count=1)[0][0].decode())
    assert oldest.line > 0  # the early lines left Redis: what follows comes from the S3 archive
    assert 0 < client.ttl(log_key(job_id)) <= settings.log_archived_ttl  # archived: it expires
    lines = [t for t in _log(api, job_id) if not t.startswith("[trainfarm]")]
    assert lines == [f"{i:05d} " + "z" * 994 for i in range(8000)]


def test_a_running_job_whose_early_lines_left_redis_says_so_in_its_log_then_serves_them_all(
    api, start_worker, settings, tmp_path: Path
):
    budget = 256 * 1024
    start_worker(overrides={"log_live_max_bytes": budget})
    go = tmp_path / "go"
    job_id = _submit(
        api,
        f"""
        import os, time
        for i in range(4000):
            print(f"{{i:05d}} " + "w" * 994, flush=i == 3999)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        print("done")
        """,
    )
    client = redis.Redis.from_url(settings.redis_url)

    def trimmed_past_the_program_lines() -> bool:
        entries = client.xrevrange(log_key(job_id), "+", "-", count=1)
        return bool(entries) and "03999 " in entries[0][1][b"lines"].decode()

    wait_for(trimmed_past_the_program_lines, what="the job's last line in its live stream")
    first = api.get(f"/jobs/{job_id}/logs", params={"limit": 2}).json()["lines"]
    oldest = LogPosition.parse(client.xrange(log_key(job_id), "-", "+", count=1)[0][0].decode())
    assert oldest.line > 0
    assert first[0]["line"] == oldest.line - 1
    assert first[0]["text"] == (
        f"[trainfarm] {oldest.line:,} lines of attempt 1 are no longer in the live log "
        "(log_live_max_bytes); its archived log has them once the attempt ends"
    )
    assert first[1]["line"] == oldest.line
    go.touch()
    wait_status(api, job_id, {"succeeded"})
    lines = [t for t in _log(api, job_id) if not t.startswith("[trainfarm]")]
    assert lines == [f"{i:05d} " + "w" * 994 for i in range(4000)] + ["done"]


def test_submissions_answer_503_while_redis_is_nearly_full(settings: Settings, tmp_path: Path):
    with RedisServer(tmp_path / "full-redis", persistent=False, maxmemory=16 * 1024 * 1024) as full:
        own = settings.model_copy(update={"redis_url": full.url})
        with (
            MasterProcess(tmp_path / "master", own) as master,
            master.client() as api,
        ):
            spec = {"command": ["true"], "queue": "cpu"}
            assert api.post("/jobs", json=spec).status_code == 201
            client = redis.Redis.from_url(full.url)
            _fill(client, 0.92)
            refused = wait_for(
                lambda: (r := api.post("/jobs", json=spec)).status_code == 503 and r, timeout=10
            )
            assert refused.headers["Retry-After"]
            assert "the farm is full for now" in refused.json()["message"]
            batch = api.post("/jobs/batch", json={"jobs": [spec]})
            assert batch.status_code == 503 and batch.headers["Retry-After"]
            client.delete(*client.keys("fill:*"))
            wait_for(lambda: api.post("/jobs", json=spec).status_code == 201, timeout=10)


def test_budgets_count_bytes_not_characters(small_redis: RedisServer, tmp_path: Path):
    """Four-byte characters are charged what they take, in the file cap and the live budget alike
    (counted in characters, both would hold four times their limit)."""
    client = redis.Redis.from_url(small_redis.url)
    client.delete(log_key(7))
    pump = _pump(client, tmp_path, live_bytes=32 * 1024, file_bytes=64 * 1024)
    for _ in range(200):
        pump.write("\U0001f600" * 250)  # 1,001 bytes with the newline; 251 characters
    pump.close()
    assert len((tmp_path / "attempt-1.log").read_bytes()) <= 64 * 1024 + 200  # the cap, and its note
    live = sum(len(value) for _, fields in client.xrange(log_key(7)) for value in fields.values())
    assert 16 * 1024 < live <= 32 * 1024 + 1024
