"""A GPU node as the farm sees it: NVML's readings in the worker's heartbeat, a job placed on
exactly the GPU it was given, a job that trains with NCCL there, and its GPU use sampled while it
runs."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import log_texts, wait_for, wait_status
from tests.gpu.test_gpu_ddp import LAUNCH
from worker import gpus

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
PY = sys.executable


def test_the_heartbeat_reports_the_gpus_and_hands_them_out(api, start_worker) -> None:
    start_worker(queues="gpu")
    found = gpus.list_gpus()

    def node() -> dict | None:
        nodes = api.get("/nodes").json()
        return next((n for n in nodes if n["name"] == "node-1" and n.get("info", {}).get("gpus")), None)

    info = wait_for(node, 30, what="the GPU node's heartbeat")["info"]  # type: ignore[index]
    assert [g["uuid"] for g in info["gpus"]] == [g["uuid"] for g in found]
    assert all(g["memory_total"] == f["memory_total"] for g, f in zip(info["gpus"], found, strict=True))
    assert info["gpu_slots"] == [g["index"] for g in found]
    assert info["versions"]["nvidia_driver"]


#: Prints what the job was given and what CUDA sees through it.
PLACED = "import os, torch; print('visible', os.environ['CUDA_VISIBLE_DEVICES'], 'count', torch.cuda.device_count())"


def test_a_job_sees_only_the_gpu_it_was_given(api, start_worker) -> None:
    start_worker(queues="gpu", overrides={"gpus": str(gpus.list_gpus()[-1]["index"])})
    last = gpus.list_gpus()[-1]["index"]
    job_id = api.post("/jobs", json={"command": [PY, "-c", PLACED], "queue": "gpu", "devices": 1}).json()[
        "id"
    ]
    job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=120)
    text = log_texts(api, job_id)
    assert job["status"] == "succeeded", "\n".join(text[-20:])
    assert f"visible {last} count 1" in text
    assert f"[trainfarm] starting with the process backend, GPUs {last}" in text


#: Keeps its GPU busy (and 1 GiB of its memory) until the file named by its argument exists.
BUSY_GPU = textwrap.dedent(
    """
    import os, sys, torch
    held = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    a = torch.randn(2048, 2048, device="cuda")
    while not os.path.exists(sys.argv[1]):
        for _ in range(50):
            a = torch.tanh(a @ a)
        torch.cuda.synchronize()
    print("done", flush=True)
    """
)


def test_a_jobs_gpu_use_is_sampled_while_it_runs(api, start_worker, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    start_worker(queues="gpu", overrides={"usage_sample_interval": 0.5})
    job_id = api.post(
        "/jobs", json={"command": [PY, "-c", BUSY_GPU, str(stop)], "queue": "gpu", "devices": 1}
    ).json()["id"]

    def busy() -> list[dict] | None:
        rows = api.get(f"/jobs/{job_id}/usage").json()
        hot = [r for r in rows if r["gpus"] and r["gpus"][0]["util"] and r["gpus"][0]["mem_used"] >= 1 << 30]
        return rows if len(hot) >= 2 else None

    rows = wait_for(busy, 90, 0.5, "two samples of a busy GPU")
    stop.touch()
    job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=60)
    assert job["status"] == "succeeded", job["error"]
    [index] = {g["index"] for r in rows for g in r["gpus"]}  # type: ignore[union-attr]
    assert index in [g["index"] for g in gpus.list_gpus()]
    summary = job["progress"]["usage"]
    assert (
        summary["gpu_util_mean"] > 0 and summary["gpu_mem_peak"] >= 1 << 30 and summary["gpu_idle"] is False
    )
    assert summary["cpu_samples"] >= 1  # its process tree is sampled beside its GPU


def test_a_farm_job_trains_with_nccl_on_its_gpu(api, start_worker) -> None:
    start_worker(queues="gpu")
    launch = LAUNCH.replace("int(sys.argv[1])", 'int(os.environ["TRAINFARM_DEVICES"])')
    job_id = api.post(
        "/jobs", json={"command": ["python", "-c", launch, "-", "nccl"], "queue": "gpu", "devices": 1}
    ).json()["id"]
    job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=150)
    text = log_texts(api, job_id)
    assert job["status"] == "succeeded", "\n".join(text[-30:])
    assert "rank 0/1 nccl on cuda:0 sum 1" in text
