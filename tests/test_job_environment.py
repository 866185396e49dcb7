"""What a job's environment keeps of the worker's (an allow-list) and what a spec's `env` may set;
no service needed."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.errors import FinalError
from shared.schemas import JobSpec
from shared.settings import PROJECT_ROOT, Settings
from worker import job_user
from worker.job_environment import job_base_environment, passes
from worker.jobenv import AttemptDirs

WORKER_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "CUDA_HOME": "/usr/local/cuda",
    "NVIDIA_DRIVER_CAPABILITIES": "compute",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
    "CONDA_PREFIX": "/opt/conda",
    "TRAINFARM_S3_SECRET_KEY": "s3-secret",
    "TRAINFARM_REDIS_URL": "redis://:pw@127.0.0.1:6379/0",
    "TRAINFARM_REDIS_PASSWORD": "pw",
    "DOCKER_HOST": "unix:///run/docker.sock",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "MINIO_ROOT_PASSWORD": "minio",
    "REDISCLI_AUTH": "pw",
    "NCCL_DEBUG": "INFO",
    "HF_HOME": "/cache/hf",
    "PYTHONPATH": "/somewhere/else",
}


def test_only_the_allow_list_passes_and_never_a_farm_setting():
    env = job_base_environment({"TRAINFARM_JOB_ID": "3"}, environ=WORKER_ENV)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "CUDA_HOME": "/usr/local/cuda",
        "NVIDIA_DRIVER_CAPABILITIES": "compute",
        "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
        "CONDA_PREFIX": "/opt/conda",
        "TRAINFARM_JOB_ID": "3",
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def test_passthrough_names_exact_and_prefix_but_never_trainfarm():
    env = job_base_environment(
        {}, ["NCCL_*", "HF_HOME", "DOCKER_HOST", "TRAINFARM_*", "TRAINFARM_S3_SECRET_KEY"], WORKER_ENV
    )
    assert env["NCCL_DEBUG"] == "INFO" and env["HF_HOME"] == "/cache/hf"
    assert env["DOCKER_HOST"] == "unix:///run/docker.sock"  # the operator asked for it by name
    assert not [k for k in env if k.startswith("TRAINFARM_")]
    assert "AWS_SECRET_ACCESS_KEY" not in env and "REDISCLI_AUTH" not in env
    # A prefix entry is a prefix, an exact one exact.
    assert not passes("HF_HOME_X", ["HF_HOME"]) and passes("NCCL_X", ["NCCL_*"])


def test_windows_names_are_case_insensitive_and_what_a_process_needs_passes():
    assert passes("SystemRoot", windows=True) and passes("ComSpec", windows=True)
    assert passes("Path", windows=True) and passes("PROGRAMFILES(X86)", windows=True)
    assert not passes("trainfarm_s3_secret_key", ["*"], windows=True)
    assert passes("nccl_debug", ["NCCL_*"], windows=True)
    assert not passes("SYSTEMROOT", windows=False)  # not on POSIX, where nothing needs it


def spec(**env: str) -> JobSpec:
    return JobSpec(command=["true"], env=env)


def test_spec_env_accepts_plain_names_and_values():
    assert spec(MY_FLAG="on", _x="", HF_HOME="/tmp/hf").env == {
        "MY_FLAG": "on",
        "_x": "",
        "HF_HOME": "/tmp/hf",
    }


@pytest.mark.parametrize(
    "env",
    [
        {"TRAINFARM_OUTPUT_DIR": "/etc"},
        {"trainfarm_job_id": "1"},
        {"PATH": "/tmp"},
        {"PythonPath": "/tmp"},
        {"CUDA_VISIBLE_DEVICES": "0,1,2,3"},
        {"NVIDIA_VISIBLE_DEVICES": "all"},
        {"1ABC": "x"},
        {"A-B": "x"},
        {"A=B": "x"},
        {"": "x"},
        {"A" * 129: "x"},
        {"A": "nul\x00byte"},
        {"A": "x" * 4097},
        {f"V{i}": "x" for i in range(65)},
    ],
    ids=lambda env: next(iter(env), "empty")[:20] + f"-{len(env)}",
)
def test_spec_env_refuses_farm_names_bad_names_and_unbounded_sizes(env):
    with pytest.raises(ValidationError):
        JobSpec(command=["true"], env=env)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="chown needs a root test run")
def test_a_job_user_gets_only_its_own_folders_and_a_hidden_work_dir_is_refused():
    nobody = job_user.resolve("nobody")
    assert nobody == job_user.resolve("65534") == job_user.JobUser("nobody", 65534, 65534)
    root = Path(tempfile.mkdtemp(prefix="trainfarm-unit-"))  # pytest's tmp_path is 0700 above
    try:
        root.chmod(0o711)
        check_prepare(root, nobody)
    finally:
        shutil.rmtree(root)


def check_prepare(root: Path, nobody: job_user.JobUser) -> None:
    hidden = root / "private"
    hidden.mkdir(mode=0o700)
    dirs = AttemptDirs.create(hidden / "work", 4, 1)
    with pytest.raises(
        FinalError, match=rf"TRAINFARM_JOB_USER=nobody cannot reach .*: {hidden} is mode 0700"
    ):
        job_user.prepare(dirs, nobody)
    hidden.chmod(0o711)
    dirs.code.mkdir()
    (dirs.code / "train.py").write_text("print(1)")
    job_user.prepare(dirs, nobody)
    owners = {p.name: (p.stat().st_uid, stat.S_IMODE(p.stat().st_mode)) for p in dirs.root.iterdir()}
    assert owners["output"][0] == owners["checkpoints"][0] == owners["home"][0] == 65534
    assert owners["code"][0] == owners["events.jsonl"][0] == 65534
    assert (dirs.code / "train.py").stat().st_uid == 65534
    assert owners["data"] == (0, 0o755)  # readable, not writable: its files are the cache's
    assert (dirs.root.stat().st_uid, stat.S_IMODE(dirs.root.stat().st_mode)) == (0, 0o755)
    assert stat.S_IMODE(dirs.root.parent.stat().st_mode) == 0o711


def test_an_unset_job_user_runs_jobs_as_the_worker():
    settings = Settings(job_user=None)
    assert job_user.job_user(settings) is None and job_user.job_user_ids(settings) is None
    if os.name == "posix":
        assert job_user.job_user_ids(Settings(job_user="nobody")) == (65534, 65534)
