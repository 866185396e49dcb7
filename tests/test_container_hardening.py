"""What a job container may do, seen from inside, through a real farm on the private dockerd: a
fork bomb stops at the pids limit and is cancelled, and the same worker then runs a job that finds
no capability, no way up through a setuid-root binary, a read-only root, a sized /tmp and the
default memory limit, and still writes its outputs as the unprivileged user it runs as; and what
a root worker hands to the job user before the container starts."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from shared.schemas import JobSpec, TaskMessage
from shared.settings import Settings
from tests.conftest import log_texts, wait_for, wait_status
from tests.docker_support import SETUID_ID, docker_settings
from trainfarm.services.docker_engine import DockerEngine
from trainfarm.services.farm import WorkerProcess
from worker.backends.base import Launch
from worker.backends.docker import NOBODY, DockerBackend, docker_client
from worker.jobenv import AttemptDirs

PIDS_LIMIT = 64  # the smallest the settings allow
TMP_SIZE_MB = 64
DEFAULT_MEMORY_MB = 1024
#: Forks at most this many: without a pids limit the test fails, and the node lives.
FORK_CAP = 1000

FORK_BOMB = textwrap.dedent(
    f"""
    import errno, json, os, time
    forked, error = 0, None
    while forked < {FORK_CAP}:
        try:
            pid = os.fork()
        except OSError as exc:
            error = errno.errorcode[exc.errno]
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        forked += 1
    print("BOMB " + json.dumps({{"forked": forked, "error": error}}), flush=True)
    time.sleep(60)
    """
)

CHECKS = textwrap.dedent(
    f"""
    import errno, json, os, subprocess
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    status = {{k: v.strip() for k, v in status.items()}}

    def read_first(*paths):
        for path in paths:
            if os.path.exists(path):
                return open(path).read().strip()
        return None

    def write_error(path):
        try:
            with open(path, "w") as fh:
                fh.write("x")
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return None

    tool = os.stat("{SETUID_ID}")
    tmp = os.statvfs("/tmp")
    open(os.path.join(os.environ["TRAINFARM_OUTPUT_DIR"], "report.txt"), "w").write("ok")
    open(os.path.join(os.environ["TRAINFARM_CHECKPOINT_DIR"], "last.ckpt"), "w").write("state")
    print("CHECKS " + json.dumps({{
        "uid": os.getuid(), "euid": os.geteuid(),
        "cap_eff": status["CapEff"], "cap_prm": status["CapPrm"], "cap_bnd": status["CapBnd"],
        "no_new_privs": status["NoNewPrivs"],
        "setuid_root": tool.st_uid == 0 and bool(tool.st_mode & 0o4000),
        "setuid_euid": subprocess.run(["{SETUID_ID}", "-u"], capture_output=True, text=True).stdout.strip(),
        "root_write": write_error("/etc/x"),
        "tmp_write": write_error("/tmp/x"), "tmp_bytes": tmp.f_blocks * tmp.f_frsize,
        "shm_write": write_error("/dev/shm/x"),
        "memory": read_first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        "pids": read_first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
        "env": sorted(os.environ), "lab_setting": os.environ.get("LAB_SETTING"),
    }}), flush=True)
    """
)


def job_spec(code: str, image: str) -> dict:
    return {"command": ["python", "-c", code], "image": image, "queue": "cpu"}


def reported(api, job_id: int, prefix: str) -> dict | None:
    line = next((t for t in log_texts(api, job_id) if t.startswith(prefix + " ")), None)
    return None if line is None else json.loads(line.removeprefix(prefix + " "))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_job_containers_are_confined_and_a_fork_bomb_leaves_the_node_working(
    api, settings: Settings, tmp_path: Path, docker_engine: DockerEngine, docker_image: str
):
    node_settings = docker_settings(settings, docker_engine).model_copy(
        update={
            "docker_pids_limit": PIDS_LIMIT,
            "docker_tmp_size": f"{TMP_SIZE_MB}m",
            "docker_default_memory_mb": DEFAULT_MEMORY_MB,
        }
    )
    client = docker_engine.client()
    node = WorkerProcess(tmp_path / "node-h", node_settings, node_name="node-h")
    node.start()
    try:
        bomb = api.post("/jobs", json=job_spec(FORK_BOMB, docker_image)).json()
        forks = wait_for(lambda: reported(api, bomb["id"], "BOMB"), 60, what="the fork bomb's count")
        [container] = client.containers.list(filters={"label": f"trainfarm.job={bomb['id']}"})
        host = client.api.inspect_container(container.id)["HostConfig"]
        # It is stuck at its pids limit, while the node around it works: it can stop it.
        assert api.post(f"/jobs/{bomb['id']}/cancel").json()["cancel_requested"] is True
        assert wait_status(api, bomb["id"], {"cancelled", "failed", "succeeded"}, 30)["status"] == "cancelled"

        checks = api.post(
            "/jobs", json={**job_spec(CHECKS, docker_image), "env": {"LAB_SETTING": "on"}}
        ).json()
        job = wait_status(api, checks["id"], {"succeeded", "failed", "cancelled"}, 60)
        assert job["status"] == "succeeded", "\n".join(log_texts(api, checks["id"])[-30:])
        inside = reported(api, checks["id"], "CHECKS")
        artifacts = {a["name"] for a in api.get(f"/jobs/{checks['id']}/artifacts").json()}
    finally:
        node.stop()
        client.close()

    # The bomb's processes (init, python, its children) stopped at the limit, well short of the cap.
    assert forks == {"forked": PIDS_LIMIT - 2, "error": "EAGAIN"}
    assert inside is not None
    assert inside["uid"] == inside["euid"] == (NOBODY[0] if os.getuid() == 0 else os.getuid())
    assert inside["cap_eff"] == inside["cap_prm"] == inside["cap_bnd"] == "0000000000000000"
    # The binary is setuid root, and runs as its caller all the same.
    assert inside["setuid_root"] is True and inside["setuid_euid"] == str(inside["uid"])
    assert inside["no_new_privs"] == "1"
    assert inside["root_write"] == "EROFS"
    assert inside["tmp_write"] is None and inside["tmp_bytes"] == TMP_SIZE_MB * 2**20
    assert inside["shm_write"] is None  # DataLoader workers share tensors there
    assert inside["memory"] == str(DEFAULT_MEMORY_MB * 2**20) and inside["pids"] == str(PIDS_LIMIT)
    # The job's own variable arrived; nothing of the worker's environment did.
    assert inside["lab_setting"] == "on"
    assert not [
        name for name in inside["env"] if name.startswith(("TRAINFARM_S3", "TRAINFARM_REDIS", "DOCKER"))
    ]
    # What it wrote as that user came back from the node.
    assert "report.txt" in artifacts
    # As the engine has it.
    assert host["PidsLimit"] == PIDS_LIMIT and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges:true"]
    # The spec named no memory_mb: the node's default, with no swap on top.
    assert host["Memory"] == host["MemorySwap"] == DEFAULT_MEMORY_MB * 2**20


@pytest.mark.skipif(
    os.name != "posix" or os.getuid() != 0, reason="only a root worker runs jobs as another user"
)
def test_a_root_workers_containers_run_as_the_job_user_who_gets_the_attempts_writable_parts(
    tmp_path: Path, docker_engine: DockerEngine, docker_image: str
):
    plain = Settings(data_dir=tmp_path / "node", node_name="node-u", job_user="4321")
    node_settings = docker_settings(plain, docker_engine)
    dirs = AttemptDirs.create(node_settings.job_work_dir, 1, 1)
    (dirs.data / "rows.csv").write_text("a\n")
    (dirs.code / "pkg").mkdir(parents=True)
    (dirs.code / "pkg" / "train.py").write_text("pass\n")
    (dirs.code / "escape").symlink_to(dirs.data / "rows.csv")
    job = JobSpec(command=["true"], image=docker_image, queue="cpu")
    client = docker_client(node_settings)
    try:
        container = DockerBackend(client, node_settings).create(
            Launch(TaskMessage(job_id=1, attempt=1, spec=job), dirs, ["true"], dirs.root)
        )
        user = client.api.inspect_container(container.id)["Config"]["User"]
        container.remove(force=True)
    finally:
        client.close()
    assert user == "4321:4321"  # a uid unknown to the node: its group of the same number
    for path in (dirs.root, dirs.output, dirs.checkpoints, dirs.code, dirs.code / "pkg" / "train.py"):
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4321), path
    # Not the datasets (hard links into the node's cache), not even through a link in the code.
    assert (dirs.code / "escape").lstat().st_uid == 4321
    assert (dirs.data.stat().st_uid, (dirs.data / "rows.csv").stat().st_uid) == (0, 0)
