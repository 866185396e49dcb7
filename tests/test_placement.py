"""GPU placement: each job gets its own GPUs through CUDA_VISIBLE_DEVICES, a job waits in the queue
while its GPUs are busy, and a job no online node could hold is refused at submit.

This machine has no GPU: the worker is told which GPU indices it hands out (TRAINFARM_GPUS, which an
operator also uses to hold GPUs back), so the placement itself runs for real; CUDA is not involved.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from master.nodes import merge_beats
from master.placement import Largest, check_fits, node_devices
from shared.errors import FinalError, InvalidRequest
from shared.schemas import JobSpec, TaskMessage
from shared.settings import Settings
from tests.conftest import log_texts, wait_for, wait_status
from trainfarm.services.farm import WorkerProcess
from worker.backends.base import Execution, Launch
from worker.backends.process import ProcessBackend
from worker.jobenv import AttemptDirs
from worker.uploads import regular_files

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

#: Prints the GPUs it was given, then holds them long enough for the others to overlap it.
SHOW_GPUS = [
    sys.executable,
    "-c",
    "import os, time; print('GPUS=' + os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(3)",
]


def gpus_seen(api: httpx.Client, job_id: int) -> str:
    [line] = [text for text in log_texts(api, job_id) if text.startswith("GPUS=")]
    return line.removeprefix("GPUS=")


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


@SQLITE_ONLY
def test_jobs_get_their_own_gpus_and_wait_for_busy_ones(
    api: httpx.Client,
    start_worker: Callable[..., WorkerProcess],
    settings: Settings,
    tmp_path: Path,
) -> None:
    start_worker("gpu-box", overrides={"gpus": "0,1", "placement_wait": 0.5}, concurrency=3)
    singles = [api.post("/jobs", json={"command": SHOW_GPUS}).json()["id"] for _ in range(2)]
    pair = api.post("/jobs", json={"command": SHOW_GPUS, "devices": 2}).json()["id"]

    done = {job: wait_status(api, job, {"succeeded"}, timeout=90) for job in [*singles, pair]}
    assert sorted(gpus_seen(api, job) for job in singles) == ["0", "1"]
    assert gpus_seen(api, pair) == "0,1"
    # The pair needed both GPUs: it ran only once both single jobs had let go of theirs.
    single_ends = [when(done[job]["finished_at"]) for job in singles]
    [pair_attempt] = api.get(f"/jobs/{pair}").json()["attempt_list"]
    assert when(pair_attempt["started_at"]) >= max(single_ends)
    assert done[pair]["attempts"] == 1  # waiting cost no attempt


@SQLITE_ONLY
def test_submit_refuses_more_devices_than_any_online_node_has(
    api: httpx.Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    # No node online: the farm may be starting, so the job is taken and waits.
    waiting = api.post("/jobs", json={"command": ["true"], "devices": 8})
    assert waiting.status_code == 201

    start_worker("small-box", overrides={"gpus": "0,1"}, queues="gpu")
    wait_for(lambda: api.get("/nodes").json(), timeout=30, what="the node to be seen")
    too_big = api.post("/jobs", json={"command": ["true"], "devices": 3})
    assert too_big.status_code == 422
    error = too_big.json()
    assert error["field"] == "devices"
    assert "small-box" in error["message"] and "2 GPUs" in error["message"]

    batch = api.post(
        "/jobs/batch", json={"jobs": [{"command": ["true"]}, {"command": ["true"], "devices": 4}]}
    )
    assert batch.status_code == 422
    assert batch.json()["field"] == "jobs[1].devices"
    # Nothing of a refused batch is stored.
    assert [job["id"] for job in api.get("/jobs").json()["items"]] == [waiting.json()["id"]]


# The process backend's environments ------------------------------------------------------------


def launch(tmp_path: Path, gpus: tuple[int, ...] = (), **spec: object) -> Launch:
    message = TaskMessage(job_id=3, attempt=1, spec=JobSpec.model_validate(spec))
    dirs = AttemptDirs.create(tmp_path / "work", 3, 1)
    return Launch(message, dirs, list(message.spec.command or []), dirs.root, gpus)


def run_to_end(execution: Execution) -> tuple[int, list[str]]:
    lines = [raw.decode().rstrip("\n") for raw in execution.output()]
    code = execution.wait()
    execution.close()
    return code, lines


@pytest.fixture(scope="module")
def envs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("envs")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "py-env")], check=True)
    return root


def test_a_named_venv_runs_the_job_with_its_own_interpreter(envs_dir: Path, tmp_path: Path) -> None:
    backend = ProcessBackend(Settings(node_name="n1", environment_dirs=[envs_dir]))
    show = "import os, sys; print(sys.prefix); print(os.environ['VIRTUAL_ENV']); print(os.environ['CUDA_VISIBLE_DEVICES'])"
    code, lines = run_to_end(
        backend.start(launch(tmp_path, (1,), command=["python", "-c", show], environment="py-env"))
    )
    assert code == 0
    assert lines == [str(envs_dir / "py-env"), str(envs_dir / "py-env"), "1"]


def test_without_an_environment_python_is_the_workers_own(tmp_path: Path) -> None:
    backend = ProcessBackend(Settings(node_name="n1"))
    code, lines = run_to_end(
        backend.start(launch(tmp_path, command=["python", "-c", "import sys; print(sys.prefix)"]))
    )
    assert (code, lines) == (0, [sys.prefix])


def test_a_missing_environment_or_program_is_a_final_error(envs_dir: Path, tmp_path: Path) -> None:
    backend = ProcessBackend(Settings(node_name="n1", environment_dirs=[envs_dir]))
    with pytest.raises(FinalError, match="environment 'no-such-env' is not on node n1"):
        backend.start(launch(tmp_path, command=["python", "-V"], environment="no-such-env"))
    with pytest.raises(FinalError, match="command 'no-such-program' not found on node n1"):
        backend.start(launch(tmp_path, command=["no-such-program"]))


def test_a_command_with_a_folder_is_the_jobs_own_file(tmp_path: Path) -> None:
    backend = ProcessBackend(Settings(node_name="n1"))
    job = launch(tmp_path, command=["./run.sh", "hello"])
    script = job.workdir / "run.sh"
    script.write_text("#!/bin/sh\necho ran with $1\n")
    script.chmod(0o644)
    with pytest.raises(FinalError, match=re.escape("cannot run './run.sh': Permission denied")):
        backend.start(job)  # not executable: the job's to fix, no retry helps
    script.chmod(0o755)
    assert run_to_end(backend.start(job)) == (0, ["ran with hello"])
    with pytest.raises(FinalError, match=re.escape("command './train.sh' not found in the job's code")):
        backend.start(launch(tmp_path, command=["./train.sh"]))


def test_uploads_never_follow_links_out_of_the_job(tmp_path: Path) -> None:
    secret = tmp_path / "node-secret"
    secret.write_text("credentials")
    output = tmp_path / "output"
    (output / "sub").mkdir(parents=True)
    (output / "sub" / "model.pt").write_text("weights")
    (output / "stolen").symlink_to(secret)
    (output / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    assert regular_files(output) == [output / "sub" / "model.pt"]


def test_devices_on_the_cpu_queue_count_cores_even_on_a_gpu_node() -> None:
    info = {"gpu_slots": [0], "cpu_count": 16}
    assert node_devices(info, "gpu") == (1, "GPUs")
    assert node_devices(info, "cpu") == (16, "CPU cores")
    assert node_devices({"gpu_slots": [], "cpu_count": 2}, "gpu") == (2, "CPU cores")


def test_a_node_offers_the_gpus_of_its_largest_worker_not_their_sum() -> None:
    """Two workers on one machine with GPU groups 0,1 and 2,3: a job runs under one worker, so a
    4-GPU job fits nowhere there and must be refused at submit, not bounce between them forever."""
    beats = [
        {"worker": f"box#{i}", "ts": 100.0 + i, "queues": ["gpu"], "gpu_slots": slots, "cpu_count": 16}
        for i, slots in enumerate(([0, 1], [2, 3]))
    ]
    merged = merge_beats(beats)
    assert merged["gpu_slots"] == [0, 1, 2, 3]  # what the machine has, for people to read
    assert node_devices(merged, "gpu") == (2, "GPUs")
    with pytest.raises(InvalidRequest, match="has 2 GPUs"):
        check_fits(
            JobSpec(command=["true"], devices=4), {"gpu": Largest("box", *node_devices(merged, "gpu"))}
        )
