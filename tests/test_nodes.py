"""The node registry: what workers report in their heartbeats, how the master judges them online,
and how `trainfarm nodes` shows them."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
import time
from importlib import metadata

import celery
import psutil
import pytest
import redis
from sqlalchemy import Engine
from sqlmodel import Session, select

from master.db import init_db, make_engine
from master.models import Node
from master.nodes import sync_nodes, to_public
from shared.streams import NODES_KEY
from tests.conftest import run_cli, wait_for, wait_status
from trainfarm import render
from trainfarm.services.farm import MasterProcess
from worker.gpus import MIB, list_gpus, parse_smi

PY = sys.executable
#: Tests with workers are about nodes, not the database: SQLite is enough.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: Neither NVML nor nvidia-smi here, so a node must report no GPUs.
NO_GPU_TOOLS = importlib.util.find_spec("pynvml") is None and shutil.which("nvidia-smi") is None

#: `nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu,temperature.gpu
#: --format=csv,noheader,nounits` on a mixed box; the third card reports neither load nor temperature.
SMI_SAMPLE = """\
0, NVIDIA H100 80GB HBM3, GPU-5e9f4b3c-8d2a-41f7-9c1e-2b7a6d0e4f13, 81559, 1, 0, 31
1, NVIDIA A100-SXM4-40GB, GPU-0a1b2c3d-4e5f-4789-abcd-ef0123456789, 40960, 38123, 97, 71
2, NVIDIA A100 80GB PCIe, MIG 1g.10gb, GPU-77c4a2a0-1f0e-4b8e-9d55-0c6f8e1d2b3a, 10240, 13, [N/A], [N/A]
"""


def test_nvidia_smi_output_is_parsed():
    assert parse_smi(SMI_SAMPLE) == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-5e9f4b3c-8d2a-41f7-9c1e-2b7a6d0e4f13",
            "memory_total": 81559 * MIB,
            "memory_used": 1 * MIB,
            "utilization_percent": 0,
            "temperature_c": 31,
        },
        {
            "index": 1,
            "name": "NVIDIA A100-SXM4-40GB",
            "uuid": "GPU-0a1b2c3d-4e5f-4789-abcd-ef0123456789",
            "memory_total": 40960 * MIB,
            "memory_used": 38123 * MIB,
            "utilization_percent": 97,
            "temperature_c": 71,
        },
        {
            "index": 2,
            "name": "NVIDIA A100 80GB PCIe, MIG 1g.10gb",  # a comma in the name, unquoted
            "uuid": "GPU-77c4a2a0-1f0e-4b8e-9d55-0c6f8e1d2b3a",
            "memory_total": 10240 * MIB,
            "memory_used": 13 * MIB,
            "utilization_percent": None,
            "temperature_c": None,
        },
    ]
    assert parse_smi("") == []
    assert parse_smi("No devices were found\n") == []


def test_gpus_are_listed_without_raising():
    gpus = list_gpus()
    if NO_GPU_TOOLS:
        assert gpus == []
    else:  # a GPU machine: whatever it has, in the documented shape
        keys = {
            "index",
            "name",
            "uuid",
            "memory_total",
            "memory_used",
            "utilization_percent",
            "temperature_c",
        }
        assert all(set(gpu) == keys for gpu in gpus)


def test_the_table_shows_what_a_node_reported_and_survives_what_it_did_not():
    beat = {
        "pool": "prefork",
        "concurrency": 4,
        "cpu_count": 16,
        "cpu_percent": 7.4,
        "memory_total": 64 * 1024**3,
        "memory_available": 12 * 1024**3,
        "gpus": [{"name": "A100"}, {"name": "A100"}, {"name": "T4"}],
        "running": [{"job_id": 3, "attempt": 1}, {"job_id": 7, "attempt": 2}],
    }
    nodes = [
        {"name": "big", "online": True, "queues": ["gpu", "cpu"], "info": beat, "last_seen": None},
        {"name": "old", "online": False, "queues": None, "info": {"gpus": "garbage"}, "last_seen": None},
    ]
    out = render.console()
    with out.capture() as captured:
        out.print(render.nodes_table(nodes))
    big, old = (" ".join(line.split()) for line in captured.get().splitlines()[1:])
    assert (
        big == "big online gpu,cpu prefork x4 16 (7%) 12.0 GiB / 64.0 GiB 2x A100, 1x T4 job 3#1, job 7#2 -"
    )
    assert old == "old offline - - - - none - -"


def test_sync_judges_silence_by_beats_and_skips_unreadable_ones(redis_server, tmp_path):
    broker = redis.Redis.from_url(redis_server.url)
    broker.flushdb()
    engine = make_engine(f"sqlite:///{tmp_path / 'nodes.db'}")
    init_db(engine)
    seconds, micros = broker.time()
    now = seconds + micros / 1e6
    broker.hset(NODES_KEY, "live", json.dumps({"name": "live", "queues": ["cpu"], "ts": now}))
    # Left in Redis by a worker that died long ago: seen, but not online.
    broker.hset(NODES_KEY, "gone", json.dumps({"name": "gone", "queues": ["gpu"], "ts": now - 3600}))
    broker.hset(NODES_KEY, "broken", b"{not json")
    broker.hset(NODES_KEY, "no-time", json.dumps({"name": "no-time"}))

    assert sync_nodes(broker, engine) == 4
    public = {n.name: to_public(n, offline_after=6.0) for n in _nodes(engine)}
    assert {name: n.online for name, n in public.items()} == {"live": True, "gone": False}
    assert public["live"].queues == ["cpu"] and public["gone"].queues == ["gpu"]

    # The same beat again is no news: the node's last_seen stands, and it is judged by that.
    before = public["live"].last_seen
    time.sleep(0.05)
    sync_nodes(broker, engine)
    [live] = [n for n in _nodes(engine) if n.name == "live"]
    assert to_public(live, offline_after=6.0).last_seen == before
    assert to_public(live, offline_after=0.01).online is False


def _nodes(engine: Engine) -> list[Node]:
    with Session(engine) as session:
        return list(session.exec(select(Node)))


@SQLITE
def test_two_workers_report_themselves_and_a_stopped_one_goes_offline(api, master, start_worker, settings):
    node_a = start_worker("node-a", queues="gpu", pool="threads", concurrency=2)
    start_worker("node-b", queues="cpu")

    def both_online() -> dict[str, dict] | None:
        nodes = {n["name"]: n for n in api.get("/nodes").json()}
        return nodes if len(nodes) == 2 and all(n["online"] for n in nodes.values()) else None

    nodes = wait_for(both_online, timeout=20, what="both nodes online")
    a, b = nodes["node-a"], nodes["node-b"]  # type: ignore[index]
    assert (a["queues"], a["info"]["pool"], a["info"]["concurrency"]) == (["gpu"], "threads", 2)
    assert (b["queues"], b["info"]["pool"], b["info"]["concurrency"]) == (["cpu"], "prefork", 1)
    for node in (a, b):
        info = node["info"]
        # Both workers run on this machine, so their numbers are this machine's.
        assert (info["name"], info["hostname"]) == (node["name"], socket.gethostname())
        assert info["cpu_count"] == os.cpu_count()
        assert 0 <= info["cpu_percent"] <= 100
        assert info["memory_total"] == psutil.virtual_memory().total
        assert 0 < info["memory_available"] <= info["memory_total"]
        assert 0 <= info["memory_percent"] <= 100
        assert psutil.pid_exists(info["pid"]) and info["started"] <= time.time()
        assert info["running"] == []
        if NO_GPU_TOOLS:
            assert info["gpus"] == []
        assert info["versions"] == {
            "python": platform.python_version(),
            "celery": celery.__version__,
            "trainfarm": metadata.version("trainfarm"),
            "torch": metadata.version("torch"),
            "nvidia_driver": None if NO_GPU_TOOLS else info["versions"]["nvidia_driver"],
            "cuda_driver": None if NO_GPU_TOOLS else info["versions"]["cuda_driver"],
        }
    assert _cli_states(master) == {"node-a": "online", "node-b": "online"}

    node_a.stop()

    def a_offline() -> bool:
        return not {n["name"]: n for n in api.get("/nodes").json()}["node-a"]["online"]

    # Judged by its last beat, which came before the stop: within the offline time plus a sync.
    wait_for(a_offline, timeout=settings.node_offline_after + 2.0, what="node-a offline")
    assert _cli_states(master) == {"node-a": "offline", "node-b": "online"}


@SQLITE
def test_a_running_attempt_is_listed_on_its_node(api, master, start_worker):
    start_worker("node-b", queues="cpu")
    job = {"command": [PY, "-c", "import time; time.sleep(30)"], "queue": "cpu"}
    job_id = api.post("/jobs", json=job).json()["id"]
    submitted = time.time()

    def running() -> list[dict]:
        nodes = {n["name"]: n for n in api.get("/nodes").json()}
        return nodes["node-b"]["info"]["running"] if "node-b" in nodes else []

    [attempt] = wait_for(running, timeout=30, what="the attempt in node-b's heartbeat")  # type: ignore[misc]
    assert (attempt["job_id"], attempt["attempt"]) == (job_id, 1)
    assert submitted - 1 <= attempt["started"] <= time.time() and psutil.pid_exists(attempt["pid"])
    [row] = [line for line in _cli(master).splitlines() if line.startswith("node-b")]
    assert f"job {job_id}#1" in row

    api.post(f"/jobs/{job_id}/cancel")
    assert wait_status(api, job_id, {"cancelled", "failed", "succeeded"}, timeout=30)["status"] == "cancelled"
    wait_for(lambda: running() == [], timeout=10, what="the attempt gone from node-b's heartbeat")


def _cli(master: MasterProcess) -> str:
    result = run_cli(master, "nodes")
    assert result.exit_code == 0, result.output
    return result.stdout


def _cli_states(master: MasterProcess) -> dict[str, str]:
    rows = [line.split() for line in _cli(master).splitlines()[1:]]
    return {row[0]: row[1] for row in rows}
