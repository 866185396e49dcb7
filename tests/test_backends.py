"""The execution backend contract, one suite over both backends (`process` and `docker`), driven
through `Backend.start(Launch(...))` with no Celery; then what only the Docker backend promises, and
one real farm that trains with DDP in a container."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from docker.types import Mount

from shared.errors import FinalError, RetryableError
from shared.events import CpuUsage
from shared.schemas import JobSpec, TaskMessage
from shared.settings import Settings
from tests.conftest import DIGITS, DIGITS_RECIPE, log_texts, upload_dataset, wait_for, wait_status
from tests.docker_support import TEST_IMAGE, docker_settings
from trainfarm.services.docker_engine import DockerEngine
from trainfarm.services.farm import WorkerProcess
from worker import identity
from worker.attempt import root_pid
from worker.backends.base import Backend, Execution, Launch
from worker.backends.docker import NOBODY, DockerBackend, docker_client, parse_mount, remove_orphans
from worker.backends.docker_execution import DockerExecution, host_pid, lines
from worker.backends.process import ProcessBackend
from worker.jobenv import AttemptDirs
from worker.usage_sampler import ProcessTree

JOB_ID, ATTEMPT = 7, 2
#: Seconds a stopped process may take beyond its grace period (a container's stop is an API call).
STOP_MARGIN = 5.0

CONTRACT = """
import json, os, sys
env = {k: v for k, v in os.environ.items()}
paths = {k: os.path.exists(v) for k, v in env.items() if k.startswith("TRAINFARM_") and v.startswith("/")}
open(os.path.join(env["TRAINFARM_OUTPUT_DIR"], "model.txt"), "w").write("weights")
open(os.path.join(env["TRAINFARM_CHECKPOINT_DIR"], "last.ckpt"), "w").write("state")
try:
    open(os.path.join(env["TRAINFARM_DATA_DIR"], "new.csv"), "w").close()
    data_writable = True
except OSError:
    data_writable = False
data = open(os.path.join(env["TRAINFARM_DATA_DIR"], "rows.csv")).read()
nets = sorted(os.listdir("/sys/class/net"))
print(json.dumps({"env": env, "exists": paths, "cwd": os.getcwd(), "data": data,
                  "data_writable": data_writable, "nets": nets}))
"""


@pytest.fixture(params=["process", "docker"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def node_settings(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    settings = Settings(data_dir=tmp_path / "node", node_name="node-b", cancel_grace_period=2.0)
    if kind == "docker":
        request.getfixturevalue("docker_image")
        settings = docker_settings(settings, request.getfixturevalue("docker_engine"))
    return settings


@pytest.fixture
def backend(kind: str, node_settings: Settings) -> Iterator[Backend]:
    if kind == "process":
        yield ProcessBackend(node_settings)
        return
    client = docker_client(node_settings)
    yield DockerBackend(client, node_settings)
    client.close()


@pytest.fixture
def dirs(node_settings: Settings) -> AttemptDirs:
    dirs = AttemptDirs.create(node_settings.job_work_dir, JOB_ID, ATTEMPT)
    (dirs.data / "rows.csv").write_text("a,b\n1,2\n")
    return dirs


def launch(kind: str, dirs: AttemptDirs, code: str, gpus: tuple[int, ...] = (), **spec: object) -> Launch:
    image = TEST_IMAGE if kind == "docker" else None
    job = JobSpec(command=["python", "-c", code], image=image, queue="cpu", **spec)  # type: ignore[arg-type]
    message = TaskMessage(job_id=JOB_ID, attempt=ATTEMPT, spec=job)
    dirs.spec.write_text(job.model_dump_json())
    return Launch(message, dirs, ["python", "-c", code], dirs.root, gpus)


def finish(execution: Execution, node_settings: Settings) -> None:
    """Close the execution; a Docker one must leave no container behind."""
    execution.close()
    execution.close()  # idempotent
    if isinstance(execution, DockerExecution):
        client = docker_client(node_settings)
        assert not client.containers.list(all=True, filters={"id": execution.container_id})
        client.close()


def read_until(output: Iterator[bytes], marker: bytes, timeout: float = 30) -> None:
    """Consume output lines until `marker`; the process has then set itself up."""
    found = threading.Event()

    def read() -> None:
        for line in output:
            if line.rstrip() == marker:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"no {marker!r} line within {timeout}s"


# -- the contract, both backends --------------------------------------------------------------


def test_contract_environment_paths_and_files(kind, backend, dirs, node_settings):
    execution = backend.start(launch(kind, dirs, CONTRACT))
    out = b"".join(execution.output())
    assert execution.wait() == 0
    finish(execution, node_settings)
    report = json.loads(out.decode().strip().splitlines()[-1])
    env = report["env"]
    assert env["TRAINFARM_JOB_ID"] == str(JOB_ID) and env["TRAINFARM_ATTEMPT"] == str(ATTEMPT)
    assert env["TRAINFARM_DEVICES"] == "1" and env["TRAINFARM_HYPERPARAMETERS"] == "{}"
    # Every contract path exists where the process looks (the events file only once written).
    assert report["exists"] == {
        "TRAINFARM_SPEC_FILE": True,
        "TRAINFARM_DATA_DIR": True,
        "TRAINFARM_OUTPUT_DIR": True,
        "TRAINFARM_CHECKPOINT_DIR": True,
        "TRAINFARM_EVENTS_FILE": False,
    }
    assert report["data"] == "a,b\n1,2\n"
    # What the process wrote is on the node, owned by the worker's user (a root worker's Docker
    # jobs: nobody's).
    assert (dirs.output / "model.txt").read_text() == "weights"
    assert (dirs.checkpoints / "last.ckpt").read_text() == "state"
    if os.name == "posix":
        owner = NOBODY[0] if kind == "docker" and os.getuid() == 0 else os.getuid()
        assert (dirs.output / "model.txt").stat().st_uid == owner
    if kind == "docker":
        assert env["TRAINFARM_OUTPUT_DIR"] == "/trainfarm/output" and report["cwd"] == "/trainfarm"
        assert report["nets"] == ["lo"]  # network_mode none
        assert report["data_writable"] is False  # datasets are hard links into the node's cache
        assert env["HOME"] == "/tmp" and env["PYTHONUNBUFFERED"] == "1"
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
        # Nothing of the worker's own environment: only the contract, ours, and the image's PATH.
        allowed = {"PATH", "HOSTNAME", "HOME", "PYTHONUNBUFFERED", "NVIDIA_VISIBLE_DEVICES", "LC_CTYPE"}
        allowed.add("PYTHONPATH")
        assert env["PYTHONPATH"] == "/opt/trainfarm"  # trainfarm's own packages, bound read-only
        assert {k for k in env if not k.startswith("TRAINFARM_")} <= allowed
    else:
        assert Path(env["TRAINFARM_OUTPUT_DIR"]) == dirs.output and Path(report["cwd"]) == dirs.root


def test_output_streams_lines_in_order_and_exit_code_propagates(kind, backend, dirs, node_settings):
    # Lines written in pieces, with pauses: the reader must reassemble them, in order.
    code = (
        "import sys, time\n"
        "for i in range(400):\n"
        "    sys.stdout.write(f'line {i}'); sys.stdout.flush()\n"
        "    sys.stdout.write(f' of 400\\n')\n"
        "    if i % 100 == 0: sys.stdout.flush(); time.sleep(0.2)\n"
        "sys.stdout.write('no newline at the end'); sys.exit(3)"
    )
    execution = backend.start(launch(kind, dirs, code))
    got = list(execution.output())
    assert execution.wait() == 3 and execution.poll() == 3
    finish(execution, node_settings)
    assert [line.decode() for line in got] == [f"line {i} of 400\n" for i in range(400)] + [
        "no newline at the end"
    ]


def test_stop_kills_a_process_that_ignores_sigterm_after_grace(kind, backend, dirs, node_settings):
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(120)"
    execution = backend.start(launch(kind, dirs, code))
    read_until(execution.output(), b"ready")
    assert execution.poll() is None
    grace = 1.0
    started = time.monotonic()
    execution.stop(grace)
    code_ = execution.wait()
    elapsed = time.monotonic() - started
    finish(execution, node_settings)
    assert grace - 0.2 <= elapsed < grace + STOP_MARGIN
    assert code_ in (-9, 137)  # SIGKILL, as a child or as a container


def test_stop_lets_a_process_that_traps_sigterm_finish_cleanly(kind, backend, dirs, node_settings):
    # Late, but within grace: the checkpoint path a SIGTERM-aware trainer takes.
    code = (
        "import os, signal, sys, time\n"
        "def bye(*_):\n"
        "    time.sleep(0.5)\n"
        "    open(os.path.join(os.environ['TRAINFARM_CHECKPOINT_DIR'], 'last.ckpt'), 'w').write('saved')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(120)"
    )
    execution = backend.start(launch(kind, dirs, code))
    read_until(execution.output(), b"ready")
    started = time.monotonic()
    execution.stop(10.0)
    assert execution.wait() == 0
    assert time.monotonic() - started < 0.5 + STOP_MARGIN
    finish(execution, node_settings)
    assert (dirs.checkpoints / "last.ckpt").read_text() == "saved"


def test_gpu_assignment_is_exactly_the_launch_gpus(kind, backend, dirs, node_settings):
    code = (
        "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('NVIDIA_VISIBLE_DEVICES'))"
    )
    job = launch(kind, dirs, code, gpus=(1, 3))
    if kind == "process":
        execution = backend.start(job)
        assert b"".join(execution.output()).decode().split() == ["1,3", "None"]
        assert execution.wait() == 0
        finish(execution, node_settings)
        return
    # A GPU container cannot start on a machine without the NVIDIA runtime: read what it would get.
    assert isinstance(backend, DockerBackend)
    container = backend.create(job)
    try:
        container.reload()
        [request] = container.attrs["HostConfig"]["DeviceRequests"]
        assert request["DeviceIDs"] == ["1", "3"] and request["Capabilities"] == [["gpu"]]
        assert "NVIDIA_VISIBLE_DEVICES=1,3" in container.attrs["Config"]["Env"]
        # The same confinement as any job: the runtime's hook sets the GPUs up from outside.
        host = container.attrs["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
        assert host["ReadonlyRootfs"] is True and host["SecurityOpt"] == ["no-new-privileges:true"]
    finally:
        container.remove(force=True)


def test_the_usage_sampler_reads_the_jobs_processes_on_both_backends(kind, backend, dirs, node_settings):
    """A container's processes are the engine's children, not the worker's: the sampler reaches
    them through the container's first process as this machine sees it (`host_pid`)."""
    code = (
        "import os, time\nheld = b'x' * (64 << 20)\nprint('ready', flush=True)\n"
        "while not os.path.exists(os.path.join(os.environ['TRAINFARM_OUTPUT_DIR'], 'stop')):\n"
        "    sum(range(10000))\n"
    )
    execution = backend.start(launch(kind, dirs, code))
    try:
        read_until(execution.output(), b"ready")
        pid = root_pid(execution)
        assert pid is not None
        tree = ProcessTree(pid)
        tree.read()  # the baseline

        def busy() -> CpuUsage | None:
            usage = tree.read()
            return usage if usage is not None and usage.rss >= 64 << 20 and usage.percent > 10 else None

        wait_for(busy, timeout=30, interval=0.5, what="the job's CPU and memory as the sampler reads them")
        (dirs.output / "stop").touch()
        assert execution.wait() == 0
    finally:
        finish(execution, node_settings)
    assert tree.read() is None  # gone: nothing more to sample


def test_a_pid_outside_the_containers_cgroup_is_not_the_containers(tmp_path: Path) -> None:
    """An engine in a VM (Docker Desktop) or on another machine reports pids of its own kernel:
    one naming some process here, outside the container's cgroup, is not taken for it."""
    container = "4f" * 32
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "cgroup").write_text("0::/user.slice/user-1000.slice/session-2.scope\n")
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(f"0::/system.slice/docker-{container}.scope\n")
    assert host_pid(container, {"Pid": 41}, proc=tmp_path) is None
    assert host_pid(container, {"Pid": 43}, proc=tmp_path) is None  # no such process here
    assert host_pid(container, {"Pid": 0}, proc=tmp_path) is None  # not running
    expected = 42 if sys.platform == "linux" else None
    assert host_pid(container, {"Pid": 42}, proc=tmp_path) == expected


# -- the Docker backend only ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["docker"])
def test_docker_limits_mounts_labels_and_user(kind, backend, dirs, node_settings):
    container = backend.create(launch(kind, dirs, "pass", memory_mb=256, cpus=0.5))
    try:
        container.reload()
        host = container.attrs["HostConfig"]
        assert host["Memory"] == 256 * 2**20 and host["MemorySwap"] == 256 * 2**20
        assert host["NanoCpus"] == 500_000_000
        assert host["NetworkMode"] == "none" and host["Init"] is True
        assert host["DeviceRequests"] in (None, [])
        assert host["ShmSize"] == 2 * 2**30  # settings.docker_shm_size "2g"
        mounts = {m["Target"]: m for m in host["Mounts"]}
        assert mounts["/trainfarm"]["Source"] == str(dirs.root.resolve()) and not mounts["/trainfarm"].get(
            "ReadOnly"
        )
        assert mounts["/trainfarm/data"]["ReadOnly"] is True
        assert all(mounts[p]["ReadOnly"] for p in ("/usr", sys.base_prefix))  # from docker_mounts
        labels = container.attrs["Config"]["Labels"]
        assert labels == {
            "trainfarm.node": "node-b",
            "trainfarm.job": str(JOB_ID),
            "trainfarm.attempt": str(ATTEMPT),
            "trainfarm.worker": identity.current().key,  # this worker, among others on the node
            "trainfarm.owner-pid": str(os.getpid()),  # the process running the attempt, and since when
            "trainfarm.owner-started": f"{psutil.Process().create_time():.3f}",
        }
        # The worker's user, who uploads and deletes the outputs; a root worker's: nobody, never root.
        user = f"{os.getuid()}:{os.getgid()}" if os.getuid() else "65534:65534"
        assert container.attrs["Config"]["User"] == user
        assert dirs.root.stat().st_uid == int(user.split(":")[0])  # it can write its events file there
        assert container.attrs["Config"]["Cmd"] == ["python", "-c", "pass"]  # the image's python
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("kind", ["docker"])
def test_docker_errors_are_final_when_the_job_is_at_fault_and_retryable_when_the_node_is(
    kind, docker_image, dirs, node_settings
):
    client = docker_client(node_settings)

    def start(image: str, argv: list[str], pull: bool = False) -> None:
        settings = node_settings.model_copy(update={"docker_pull": pull})
        job = JobSpec(command=argv, image=image, queue="cpu")
        DockerBackend(client, settings).start(
            Launch(TaskMessage(job_id=1, attempt=1, spec=job), dirs, argv, dirs.root)
        )

    try:
        absent = "127.0.0.1:9/trainfarm/absent:1"
        with pytest.raises(FinalError) as missing:
            start(absent, ["true"])
        assert missing.value.message.startswith(
            f"image '{absent}' is not on node node-b and could not be pulled: "
        )
        assert "pulling is off" in missing.value.message and missing.value.field == "image"
        # A registry that cannot be reached (a closed port here) may answer later: retryable.
        with pytest.raises(RetryableError, match=f"image '{absent}' could not be pulled on node-b"):
            start(absent, ["true"], pull=True)
        with pytest.raises(FinalError, match="is not a valid image name"):
            start("Lab/UPPER:1", ["true"])
        # The image is there, the program is not: the container's init says so and exits non-zero,
        # which fails the job for good, as any program's non-zero exit does.
        settings = node_settings.model_copy(update={"docker_pull": False})
        job = JobSpec(command=["/no/such/program"], image=docker_image, queue="cpu")
        message = TaskMessage(job_id=1, attempt=1, spec=job)
        execution = DockerBackend(client, settings).start(
            Launch(message, dirs, ["/no/such/program"], dirs.root)
        )
        said = b"".join(execution.output()).decode()
        assert execution.wait() != 0 and "/no/such/program" in said
        execution.close()
        assert client.containers.list(all=True, filters={"label": "trainfarm.node=node-b"}) == []
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["docker"])
def test_remove_orphans_removes_containers_of_gone_workers_never_a_live_siblings(
    kind, backend, dirs, node_settings, docker_image
):
    # This test process stands for a live worker of node-b: its running container survives.
    running = backend.start(launch(kind, dirs, "import time; time.sleep(120)"))
    other_settings = node_settings.model_copy(update={"node_name": "node-other"})
    client = docker_client(node_settings)
    other = DockerBackend(client, other_settings).create(launch(kind, dirs, "pass"))
    # A second worker on this machine under the same node name, and one whose process has ended.
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def labelled(pid: int, started: float | None) -> str:
        labels = {
            "trainfarm.node": "node-b",
            "trainfarm.worker": "node-b#sibling",
            "trainfarm.owner-pid": str(pid),
        }
        if started is not None:
            labels["trainfarm.owner-started"] = f"{started:.3f}"
        return client.containers.create(docker_image, ["true"], labels=labels).id

    try:
        of_sibling = labelled(sibling.pid, psutil.Process(sibling.pid).create_time())
        of_dead = labelled(dead.pid, None)
        # The owner's pid is in use again, by a process that started later: not the owner.
        reused = labelled(os.getpid(), psutil.Process().create_time() - 3600)
        # Before each new container, the sweep removes what gone owners left, and nothing else.
        backend.start(launch(kind, dirs, "pass")).close()
        ids = {c.id for c in client.containers.list(all=True)}
        assert of_sibling in ids and of_dead not in ids and reused not in ids
        assert running.poll() is None

        sibling.kill()  # that worker killed with -9: its container is an orphan now
        sibling.wait()
        assert remove_orphans(client, "node-b") == 1
        assert of_sibling not in {c.id for c in client.containers.list(all=True)}
        assert running.poll() is None and remove_orphans(client, "node-b") == 0
    finally:
        sibling.kill()
        sibling.wait()
        finish(running, node_settings)
        other.remove(force=True)
        client.close()


def test_docker_mounts_setting_parses_posix_and_windows_hosts():
    assert parse_mount("/srv/data:/data:ro") == Mount("/data", "/srv/data", type="bind", read_only=True)
    assert parse_mount("C:\\data:/data") == Mount("/data", "C:\\data", type="bind", read_only=False)
    with pytest.raises(ValueError, match="not host:container"):
        parse_mount("/just-one-path")


def test_lines_reassembles_chunks_cut_anywhere():
    chunks = [b"ab", b"c\nde", b"f\n\ng", b"h"]
    assert list(lines(chunks)) == [b"abc\n", b"def\n", b"\n", b"gh"]
    assert list(lines([b"x\n"])) == [b"x\n"]


# -- a real farm ------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_docker_job_trains_with_ddp_through_a_farm(
    api, settings: Settings, tmp_path: Path, docker_engine: DockerEngine, docker_image: str
):
    # What a worker of this node killed with -9 left running: the next worker's start removes it.
    client = docker_engine.client()
    leftover = client.containers.run(
        docker_image,
        ["sleep", "300"],
        detach=True,
        labels={"trainfarm.node": "node-d"},
        volumes=["/usr:/usr:ro"],
    )
    node = WorkerProcess(tmp_path / "node-d", docker_settings(settings, docker_engine), node_name="node-d")
    node.start()
    try:
        wait_for(
            lambda: not client.containers.list(all=True, filters={"id": leftover.id}),
            30,
            what="orphan removal",
        )
        upload_dataset(api, DIGITS)
        spec = {**DIGITS_RECIPE, "image": docker_image, "devices": 2, "max_epochs": 1, "memory_mb": 4096}
        job_id = api.post("/jobs", json=spec).json()["id"]
        job = wait_status(api, job_id, {"succeeded", "failed", "cancelled"}, timeout=150)
        text = log_texts(api, job_id)
        assert job["status"] == "succeeded", "\n".join(text[-40:])
    finally:
        node.stop()
    assert "[trainfarm] starting with the docker backend, no GPU" in text
    assert any("world_size=2" in line for line in text)
    assert {"model.pt", "metrics.json"} <= {a["name"] for a in api.get(f"/jobs/{job_id}/artifacts").json()}
    # The worker removed its container.
    assert client.containers.list(all=True, filters={"label": "trainfarm.node=node-d"}) == []
    client.close()
