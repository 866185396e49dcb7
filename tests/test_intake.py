"""When a worker takes jobs: it stops consuming while its disk is low or it drains, says why in
its heartbeat, leaves its running attempts alone, and consumes again once the reason is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared.settings import Settings
from shared.streams import drain_key
from tests.conftest import ON_CI, wait_for, wait_status
from trainfarm.services.farm import WorkerProcess
from worker.intake import MIB, DiskReading, disk_floor, disk_pause_reason, read_disks

PY = sys.executable
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_the_floor_is_the_larger_of_the_two_settings():
    assert disk_floor(100 * 1024 * MIB, 2048, 1.0) == 2048 * MIB  # 1% of 100 GiB is less
    assert disk_floor(1024 * 1024 * MIB, 2048, 1.0) == int(1024 * 1024 * MIB * 0.01)
    assert disk_floor(64 * MIB, 32, 0) == 32 * MIB


def test_a_low_disk_pauses_and_only_ample_space_resumes():
    def reading(free_mib: int) -> list[DiskReading]:
        return [
            DiskReading(Path("/cache"), 10_000 * MIB, 20_000 * MIB),
            DiskReading(Path("/work"), free_mib * MIB, 64 * MIB),
        ]

    assert disk_pause_reason(reading(33), 32, 0, paused=False) is None
    assert (
        disk_pause_reason(reading(16), 32, 0, paused=False) == "disk low: 16 MiB free on /work, needs 32 MiB"
    )
    # Once paused, just over the floor is not enough: it would flip back at the next write.
    assert disk_pause_reason(reading(33), 32, 0, paused=True) is not None
    assert disk_pause_reason(reading(40), 32, 0, paused=True) is None
    assert disk_pause_reason(reading(0), 0, 0, paused=True) is None  # both floors off


def test_disks_are_read_through_folders_not_made_yet(tmp_path):
    [disk] = read_disks([tmp_path / "not" / "yet"])
    usage = shutil.disk_usage(tmp_path)
    assert disk.path == tmp_path / "not" / "yet" and disk.total == usage.total and disk.free > 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs, mounted for the test and unmounted after it (needs root, as on CI)."""
    path = tmp_path / "disk"
    path.mkdir()
    reason = None
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        reason = "mounting a tmpfs needs root and mount(8)"
    else:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], capture_output=True, text=True
        )
        reason = f"mount -t tmpfs failed: {done.stderr.strip()}" if done.returncode else None
    if reason is not None:
        if ON_CI:
            pytest.fail(reason)
        pytest.skip(f"LOUD SKIP: {reason}; the disk-low pause test did not run")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _node(api: httpx.Client, name: str = "node-1") -> dict | None:
    nodes = {n["name"]: n for n in api.get("/nodes").json()}
    node = nodes.get(name)
    return node if node and node["online"] else None


def _queued_messages(settings: Settings, queue: str) -> int:
    """Task messages waiting in the broker on `queue`, over its priority lists."""
    client = redis.Redis.from_url(settings.redis_url)
    return sum(client.llen(key) for key in [queue, *(f"{queue}:{p}" for p in range(1, 10))])


def _beats_pass(api: httpx.Client, count: int) -> None:
    """Wait until the node has beaten `count` more times (as the master saw it)."""
    first = _node(api)
    assert first is not None
    start = first["info"]["ts"]
    wait_for(
        lambda: (n := _node(api)) and n["info"]["ts"] >= start + count * 0.9,
        timeout=30,
        what=f"{count} more heartbeats",
    )


def _stays_queued(api: httpx.Client, settings: Settings, job_id: int) -> None:
    # A paused worker offers admission nothing: the job waits unpublished, says why, and a few
    # beats later still does, unstarted.
    reason = "waiting: no worker online takes jobs from queue cpu"
    wait_for(lambda: api.get(f"/jobs/{job_id}").json()["wait_reason"] == reason, timeout=30, what=reason)
    _beats_pass(api, 3)
    assert _queued_messages(settings, "cpu") == 0
    job = api.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["attempts"], job["wait_reason"]) == ("queued", 1, reason)


@SQLITE
def test_a_worker_whose_disk_is_low_pauses_and_resumes_with_space(
    api, start_worker: Callable[..., WorkerProcess], settings, small_disk, tmp_path
):
    overrides = {
        "work_dir": small_disk / "work",
        "cache_dir": small_disk / "cache",
        "min_free_disk_mb": 32,
        "min_free_disk_percent": 0,
    }
    start_worker("node-1", overrides=overrides, queues="cpu", concurrency=2)
    wait_for(lambda: (n := _node(api)) and n["queues"] == ["cpu"], timeout=30, what="node-1 consuming")
    # A running attempt, which the pause must leave alone: it ends when the test says so.
    release = tmp_path / "release"
    waits = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.1)\nprint('released')"
    running = api.post("/jobs", json={"command": [PY, "-c", waits], "queue": "cpu"}).json()["id"]
    wait_status(api, running, {"running"}, timeout=60)

    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (48 * MIB))

    def paused() -> dict | None:
        node = _node(api)
        return node if node and node["info"]["paused"] and node["queues"] == [] else None

    node: dict = wait_for(paused, timeout=30, what="node-1 paused for its disk")  # type: ignore[assignment]
    assert node["info"]["paused"].startswith("disk low: ") and "needs 32 MiB" in node["info"]["paused"]
    assert [(w["paused"], w["queues"]) for w in node["info"]["workers"]] == [(node["info"]["paused"], [])]
    waiting = api.post("/jobs", json={"command": [PY, "-c", "print('ran')"], "queue": "cpu"}).json()["id"]
    _stays_queued(api, settings, waiting)
    assert api.get(f"/jobs/{running}").json()["status"] == "running"

    filler.unlink()
    wait_for(
        lambda: (n := _node(api)) and n["info"]["paused"] is None and n["queues"] == ["cpu"],
        timeout=30,
        what="node-1 taking jobs again",
    )
    job = wait_status(api, waiting, {"succeeded", "failed"}, timeout=60)
    assert (job["status"], job["attempts"], job["handbacks"]) == ("succeeded", 1, 0), job
    release.touch()
    job = wait_status(api, running, {"succeeded", "failed"}, timeout=60)
    assert (job["status"], job["attempts"]) == ("succeeded", 1), job


@SQLITE
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_draining_worker_stops_consuming(api, start_worker: Callable[..., WorkerProcess], settings, pool):
    # Each pool runs the consumer on another loop; the pause is made on that loop in each.
    start_worker("node-1", queues="cpu", pool=pool)
    node: dict = wait_for(lambda: (n := _node(api)) and n["queues"] == ["cpu"] and n, timeout=30)  # type: ignore[assignment]
    client = redis.Redis.from_url(settings.redis_url)
    client.set(drain_key(node["info"]["worker"]), "1")  # what its main process sets at shutdown
    wait_for(
        lambda: (
            (n := _node(api))
            and n["queues"] == []
            and n["info"]["paused"] == "draining: this worker is shutting down"
        ),
        timeout=30,
        what="node-1 paused while it drains",
    )
    waiting = api.post("/jobs", json={"command": [PY, "-c", "print('ran')"], "queue": "cpu"}).json()["id"]
    _stays_queued(api, settings, waiting)

    client.delete(drain_key(node["info"]["worker"]))
    job = wait_status(api, waiting, {"succeeded", "failed"}, timeout=60)
    assert (job["status"], job["attempts"], job["handbacks"]) == ("succeeded", 1, 0), job
