"""A process-backend job holds none of the farm's secrets: its environment is an allow-list of the
worker's, and with TRAINFARM_JOB_USER it runs as that user, who cannot read the worker's files or
/proc/<worker>/environ nor change the node's dataset cache, while its outputs still reach S3."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import S3_SECRET, log_texts, upload_dataset, wait_status

pytestmark = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0, reason="running jobs as another user needs a root worker"
)

#: A shell script, not Python: the test's interpreter may lie where `nobody` cannot read it.
JOB = textwrap.dedent(
    r"""
    echo "uid $(id -u) gid $(id -g) groups $(id -G)"
    env | sed 's/^/ENV /'
    worker=$(awk '/^PPid:/ {print $2}' /proc/$PPID/status)
    for f in /proc/$PPID/environ /proc/$worker/environ $SECRET_FILES; do
        if err=$(cat "$f" 2>&1 >/dev/null); then echo "READ $f"; else echo "DENIED $f: $err"; fi
    done
    if err=$( (echo changed >> "$TRAINFARM_DATA_DIR/rows.csv") 2>&1); then echo "WROTE dataset"
    else echo "DENIED dataset: $err"; fi
    if err=$( (echo new > "$TRAINFARM_DATA_DIR/new.csv") 2>&1); then echo "WROTE data dir"
    else echo "DENIED data dir: $err"; fi
    echo weights > "$TRAINFARM_OUTPUT_DIR/model.txt"
    echo "HOME is $HOME" > "$HOME/note" && echo "home writable"
    """
)


@pytest.fixture
def job_work_dir() -> Iterator[Path]:
    """A work dir `nobody` can pass into (pytest's tmp_path is 0700, as a data dir should be)."""
    path = Path(tempfile.mkdtemp(prefix="trainfarm-jobs-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def secrets_of(settings, master) -> list[str]:
    """Every secret value of this farm that a job's log must not show."""
    values = [S3_SECRET, settings.redis_url, settings.redis_connection_url(), master.token]
    password = urlsplit(settings.redis_connection_url()).password
    values += [password] if password else []
    for name in ("session.key", "signing.key"):
        path = settings.data_dir / name
        if path.is_file():
            values.append(path.read_text().strip())
    return [v for v in values if v]


def run_job(api, worker, secret_files: list[Path]) -> tuple[int, list[str]]:
    spec = {
        "command": ["sh", "-c", JOB],
        "datasets": ["rows.csv"],
        "queue": "cpu",
        "env": {"SECRET_FILES": " ".join(map(str, secret_files)), "SPEC_FLAG": "from the spec"},
    }
    job_id = api.post("/jobs", json=spec).json()["id"]
    job = wait_status(api, job_id, {"succeeded", "failed"})
    lines = log_texts(api, job_id)
    assert job["status"] == "succeeded", "\n".join(lines)
    return job_id, lines


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_jobs_see_no_farm_secret_and_a_job_user_reads_none_of_the_workers_files(
    api, master, settings, start_worker, job_work_dir, tmp_path, monkeypatch
):
    # What a worker's own environment may hold beyond its settings.
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/not-for-jobs.sock")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-not-for-jobs")
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    secrets_dir = settings.data_dir / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "trainfarm_s3_secret_key").write_text(S3_SECRET)
    (secrets_dir / "trainfarm_s3_secret_key").chmod(0o600)
    secret_files = [
        settings.data_dir / "credentials.json",
        settings.data_dir / "signing.key",
        secrets_dir / "trainfarm_s3_secret_key",
        settings.dataset_cache_dir,
    ]
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b\n1,2\n")
    upload_dataset(api, rows)
    secrets = secrets_of(settings, master)

    # 1. As nobody.
    overrides = {"job_user": "nobody", "work_dir": job_work_dir, "job_env_passthrough": ["NCCL_*"]}
    worker = start_worker("node-iso", overrides=overrides)
    job_id, lines = run_job(api, worker, secret_files)
    worker.stop()
    text = "\n".join(lines)
    assert "uid 65534 gid 65534 groups 65534" in lines  # its own group, none of root's
    env = dict(line[4:].split("=", 1) for line in lines if line.startswith("ENV ") and "=" in line)
    assert not [s for s in secrets if s in text]
    assert_allow_listed(env)
    assert env["NCCL_DEBUG"] == "WARN" and env["SPEC_FLAG"] == "from the spec"
    assert env["USER"] == "nobody" and env["HOME"] == f"{job_work_dir}/job-{job_id}/attempt-1/home"
    assert "home writable" in lines
    denied = [line for line in lines if line.startswith(("DENIED", "READ", "WROTE"))]
    assert len(denied) == 2 + len(secret_files) + 2, denied
    assert all(line.startswith("DENIED") and "Permission denied" in line for line in denied), denied
    # The dataset is untouched, in the job's folder and the node's cache alike.
    [cached] = [p for p in settings.dataset_cache_dir.rglob("rows.csv")]
    assert cached.read_text() == "a,b\n1,2\n" and stat.S_IMODE(cached.stat().st_mode) == 0o444
    # The worker read what the job wrote and removed the attempt's folder.
    assert api.get(f"/jobs/{job_id}/artifacts/model.txt").content == b"weights\n"
    assert not (job_work_dir / f"job-{job_id}" / "attempt-1").exists()

    # 2. As the worker's own user (root): the environment is still the allow-list.
    worker = start_worker("node-own", overrides={"work_dir": job_work_dir})
    job_id, lines = run_job(api, worker, [])
    text = "\n".join(lines)
    assert "uid 0 gid 0 groups 0" in lines
    env = dict(line[4:].split("=", 1) for line in lines if line.startswith("ENV ") and "=" in line)
    assert not [s for s in secrets if s in text]
    assert_allow_listed(env)
    assert "NCCL_DEBUG" not in env  # not passed through by this worker
    assert api.get(f"/jobs/{job_id}/artifacts/model.txt").content == b"weights\n"


def assert_allow_listed(env: dict[str, str]) -> None:
    farm = {k for k in env if k.startswith("TRAINFARM_")}
    assert farm == {
        "TRAINFARM_JOB_ID",
        "TRAINFARM_ATTEMPT",
        "TRAINFARM_SPEC_FILE",
        "TRAINFARM_DATA_DIR",
        "TRAINFARM_OUTPUT_DIR",
        "TRAINFARM_CHECKPOINT_DIR",
        "TRAINFARM_EVENTS_FILE",
        "TRAINFARM_DEVICES",
        "TRAINFARM_HYPERPARAMETERS",
    }
    assert not [k for k in env if k.startswith(("DOCKER_", "AWS_", "REDIS", "MINIO_", "FLOWER_"))]
