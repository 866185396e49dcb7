"""The Docker backend's GPU request on a real GPU: a job container asks for exactly its GPUs
(device_requests) and, where the NVIDIA container toolkit is installed, sees that GPU and no other."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.conftest import log_texts, wait_status
from tests.docker_support import docker_settings
from trainfarm.services.docker_engine import DockerEngine
from trainfarm.services.farm import WorkerProcess
from worker import gpus
from worker.backends.docker import gpu_requests

pytestmark = pytest.mark.gpu
#: What lets the Docker engine honour a GPU request (its built-in "nvidia" device driver uses it).
HOOK = "nvidia-container-runtime-hook"


def test_the_request_names_exactly_the_attempts_gpus() -> None:
    [request] = gpu_requests((1, 3))
    assert (request["DeviceIDs"], request["Capabilities"]) == (["1", "3"], [["gpu"]])
    assert gpu_requests(()) == []


def test_a_gpu_container_sees_the_gpu_it_was_given(
    api, settings: Settings, tmp_path: Path, docker_engine: DockerEngine, docker_image: str
) -> None:
    if shutil.which(HOOK) is None:
        pytest.skip(
            f"LOUD SKIP: {HOOK} not found (the NVIDIA container toolkit); the GPU container test did not run"
        )
    last = gpus.list_gpus()[-1]
    node = WorkerProcess(
        tmp_path / "node-g",
        docker_settings(settings, docker_engine).model_copy(update={"gpus": str(last["index"])}),
        queues="gpu",
        node_name="node-g",
    )
    node.start()
    try:
        spec = {"command": ["nvidia-smi", "-L"], "image": docker_image, "queue": "gpu", "devices": 1}
        job_id = api.post("/jobs", json=spec).json()["id"]
        job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=120)
        text = log_texts(api, job_id)
    finally:
        node.stop()
    assert job["status"] == "succeeded", "\n".join(text[-20:])
    listed = [line for line in text if line.startswith("GPU ")]
    assert len(listed) == 1 and last["uuid"] in listed[0], listed
