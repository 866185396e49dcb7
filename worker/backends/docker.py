"""The Docker backend: the job runs in its image, in a container with no network, no capabilities,
no way to gain privileges, a pids limit, a memory limit and a read-only root with a sized /tmp, that sees
its attempt's directories (datasets read-only) and exactly the GPUs given to it."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Any

import docker
import psutil
import requests
from docker.errors import APIError, DockerException, ImageNotFound
from docker.models.containers import Container
from docker.models.images import Image
from docker.types import DeviceRequest, Mount

from shared.errors import FinalError, RetryableError
from shared.schemas import JobSpec
from shared.settings import PROJECT_ROOT, Settings
from worker import identity
from worker.backends.base import Backend, Launch
from worker.backends.docker_execution import DockerExecution
from worker.job_user import chown_tree, job_user_ids
from worker.jobenv import AttemptDirs, job_environment

log = logging.getLogger(__name__)

#: Where a container sees its attempt's directory (data, output, checkpoints, code, events file).
CONTAINER_ROOT = "/trainfarm"
#: trainfarm's own packages, bound read-only and importable in every job container, so user code can
#: `from worker.runtime import TrainfarmCallback` (stdlib, NumPy, torch and Lightning suffice) and a
#: recipe runs in any image that has its libraries, without trainfarm installed there.
CONTAINER_LIBRARY = "/opt/trainfarm"
LIBRARY_PACKAGES = ("worker", "shared")
#: On every job container; `remove_orphans` looks at this node's containers by the node label.
NODE_LABEL, JOB_LABEL, ATTEMPT_LABEL = "trainfarm.node", "trainfarm.job", "trainfarm.attempt"
#: The worker (identity key, `node#instance`) whose attempt the container runs: several workers
#: may share a machine, a node name and its Docker engine.
WORKER_LABEL = "trainfarm.worker"
#: The worker process that runs the container's attempt, and when that process started (a pid is
#: reused after a reboot or a while): a container whose owner is gone is an orphan.
OWNER_LABEL, OWNER_STARTED_LABEL = "trainfarm.owner-pid", "trainfarm.owner-started"


def docker_client(settings: Settings, timeout: float = 60) -> docker.DockerClient:
    """A client of the configured engine (else DOCKER_HOST or the platform default), speaking the
    engine's own API version: an older engine refuses the SDK's newest."""
    if settings.docker_host:
        return docker.DockerClient(base_url=settings.docker_host, version="auto", timeout=int(timeout))
    return docker.from_env(version="auto", timeout=int(timeout))


def remove_orphans(client: docker.DockerClient, node_name: str) -> int:
    """Remove the job containers of this node whose owning worker process is gone: at the worker's
    start (a worker killed with -9 never removed them) and before each new container (a pool
    process killed by the OOM killer, say), so they do not hold on to a GPU whose lock their death
    released. Their attempts were declared lost and run again. A container whose owner lives is
    left alone, whichever worker it belongs to: a sibling worker on this machine, under the same
    node name, runs it."""
    mine = client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node_name}"})
    leftovers = [c for c in mine if not owner_alive(c.labels)]
    for container in leftovers:
        container.remove(force=True)
    return len(leftovers)


def owner_labels() -> dict[str, str]:
    """Who runs a container: this worker and this very process (a pool child's, under prefork)."""
    return {
        WORKER_LABEL: identity.current().key,
        OWNER_LABEL: str(os.getpid()),
        OWNER_STARTED_LABEL: f"{psutil.Process().create_time():.3f}",
    }


def owner_alive(labels: dict[str, str]) -> bool:
    """The labelled owner process runs: its pid exists and, where the label says when it started,
    it is that process and not a later one that got the pid again."""
    pid, started = labels.get(OWNER_LABEL), labels.get(OWNER_STARTED_LABEL)
    if pid is None or not pid.isdigit():
        return False
    try:
        process = psutil.Process(int(pid))
        return started is None or abs(process.create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        # AccessDenied: someone else's process has the pid now, so not our worker either.
        return False


def parse_mount(text: str) -> Mount:
    """A `docker_mounts` entry, "host:container[:ro|rw]"; the host part may be C:\\data."""
    rest, _, mode = text.rpartition(":")
    if mode not in ("ro", "rw"):
        rest, mode = text, "rw"
    host, _, target = rest.rpartition(":")
    if not host or not target.startswith("/"):
        raise ValueError(f"TRAINFARM_DOCKER_MOUNTS: {text!r} is not host:container[:ro]")
    return Mount(target, host, type="bind", read_only=mode == "ro")


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._extra_mounts = [parse_mount(m) for m in settings.docker_mounts]

    def start(self, launch: Launch) -> DockerExecution:
        try:
            removed = remove_orphans(self._client, self._settings.node_name)
        except (DockerException, requests.RequestException) as exc:
            raise RetryableError(f"Docker engine unreachable on {self._settings.node_name}: {exc}") from exc
        if removed:
            log.warning("removed %d containers whose worker process had died", removed)
        container = self.create(launch)
        try:
            # Attached before the start, so no line is missed; not the log stream, which can end
            # before the engine has logged an unterminated last line.
            stream = self._client.api.attach(container.id, stdout=True, stderr=True, stream=True)
            execution = DockerExecution(self._client, container.id, stream, self._settings.log_line_max_bytes)
            container.start()
        except (DockerException, requests.RequestException) as exc:
            # Best effort: if the engine is away, the worker's next start removes it (labelled).
            with contextlib.suppress(DockerException, requests.RequestException):
                container.remove(force=True)
            if _job_at_fault(exc):
                raise FinalError(
                    f"container of {launch.message.spec.image} did not start: {_said(exc)}", field="command"
                ) from exc
            raise RetryableError(f"container of {launch.message.spec.image} did not start: {exc}") from exc
        return execution

    def create(self, launch: Launch) -> Container:
        """The attempt's container, created but not started (the tests read its settings here)."""
        spec = launch.message.spec
        if spec.image is None:
            raise FinalError("the Docker backend runs jobs that name an 'image'", field="image")
        image_env = self._ensure_image(spec.image)
        inside = AttemptDirs.inside(CONTAINER_ROOT)
        environment = job_environment(launch.message, inside)
        # Ours first, then the image's own, which a plain PYTHONPATH=... would have replaced.
        python_path = ":".join(p for p in (CONTAINER_LIBRARY, image_env.get("PYTHONPATH")) if p)
        environment.update(
            PYTHONUNBUFFERED="1",
            PYTHONPATH=python_path,
            HOME="/tmp",
            # The NVIDIA runtime reads this too: set, an image's ENV ...=all cannot expose every GPU.
            NVIDIA_VISIBLE_DEVICES=",".join(str(g) for g in launch.gpus) or "void",
        )
        environment.update(spec.env)  # the job's own, last; the spec refuses the names above
        workdir = inside.root.joinpath(*launch.workdir.relative_to(launch.dirs.root).parts)
        job, attempt = str(launch.message.job_id), str(launch.message.attempt)
        user = container_user(self._settings)
        # A root worker's job runs as someone else, who must own what the job writes.
        if user is not None and os.name == "posix" and os.getuid() == 0:
            _posix_give_to_job_user(launch.dirs, *user)
        try:
            return self._client.containers.create(
                spec.image,
                launch.argv,
                name=f"trainfarm-{job}-{attempt}-{uuid.uuid4().hex[:8]}",
                labels={
                    NODE_LABEL: self._settings.node_name,
                    JOB_LABEL: job,
                    ATTEMPT_LABEL: attempt,
                    **owner_labels(),
                },
                environment=environment,
                working_dir=str(workdir),
                mounts=self._mounts(launch.dirs),
                network_mode="none",
                shm_size=self._settings.docker_shm_size,
                device_requests=gpu_requests(launch.gpus),
                # An init as PID 1 hands SIGTERM to the job (which, as PID 1, would not die of it) and reaps.
                init=True,
                **hardening(self._settings),
                **limits(spec, self._settings),
                **({} if user is None else {"user": f"{user[0]}:{user[1]}"}),
            )
        except (DockerException, requests.RequestException) as exc:
            raise RetryableError(
                f"container of {spec.image} not created on {self._settings.node_name}: {exc}"
            ) from exc

    def _ensure_image(self, image: str) -> dict[str, str]:
        """The image's own environment (its ENV lines), pulling the image if allowed and needed."""
        try:
            return _image_env(self._client.images.get(image))
        except ImageNotFound:
            why = "pulling is off (TRAINFARM_DOCKER_PULL=false)"
        except APIError as exc:  # an invalid reference (upper case, say): no node can run it
            raise FinalError(
                f"image '{image}' is not a valid image name: {_said(exc)}", field="image"
            ) from exc
        node = self._settings.node_name
        if self._settings.docker_pull:
            try:
                return _image_env(self._client.images.pull(image))
            except (DockerException, requests.RequestException) as exc:
                why = _said(exc)
                if not _job_at_fault(exc):  # registry down, DNS, timeouts: another try may get it
                    raise RetryableError(f"image '{image}' could not be pulled on {node}: {why}") from exc
        raise FinalError(
            f"image '{image}' is not on node {node} and could not be pulled: {why}", field="image"
        )

    def _mounts(self, dirs: AttemptDirs) -> list[Mount]:
        root = dirs.root.resolve()
        return [
            Mount(CONTAINER_ROOT, str(root), type="bind"),
            # On top, read-only: the files are hard links into the node's dataset cache.
            Mount(f"{CONTAINER_ROOT}/data", str(root / "data"), type="bind", read_only=True),
            *(
                Mount(
                    f"{CONTAINER_LIBRARY}/{package}", str(PROJECT_ROOT / package), type="bind", read_only=True
                )
                for package in LIBRARY_PACKAGES
            ),
            *self._extra_mounts,
        ]


def _image_env(image: Image) -> dict[str, str]:
    pairs = (entry.split("=", 1) for entry in image.attrs.get("Config", {}).get("Env") or [])
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def _said(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)  # the engine's or registry's words, not the URL


def _job_at_fault(exc: Exception) -> bool:
    """The engine refused the job's own request (no such image or executable, access denied): a
    client error, not a GPU runtime missing on this node, which another node may have."""
    if not isinstance(exc, APIError) or not exc.is_client_error():
        return False
    return "device driver" not in _said(exc) and "nvidia" not in _said(exc).lower()


def gpu_requests(gpus: tuple[int, ...]) -> list[DeviceRequest]:
    if not gpus:
        return []
    return [DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])]


def hardening(settings: Settings) -> dict[str, Any]:
    """What every job container is denied: any capability (the NVIDIA runtime's hook sets the GPUs
    up from outside and needs none inside), gaining privileges (a setuid binary runs as its
    caller), more than `docker_pids_limit` processes, writing anywhere but its mounts and /tmp."""
    # /tmp stays exec: PyTorch extensions and Triton build shared objects there and load them.
    tmp = f"rw,exec,nosuid,nodev,size={settings.docker_tmp_size},mode=1777"
    return {
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": settings.docker_pids_limit,
        "read_only": True,
        "tmpfs": {"/tmp": tmp},
    }


def limits(spec: JobSpec, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    memory_mb = settings.docker_default_memory_mb if spec.memory_mb is None else spec.memory_mb
    if memory_mb:  # a default of 0: no limit
        out["mem_limit"] = out["memswap_limit"] = f"{memory_mb}m"  # the same: no swap on top
    if spec.cpus is not None:
        out["nano_cpus"] = round(spec.cpus * 1e9)
    return out


#: Who a root worker's containers run as when `job_user` is unset: nobody, never root.
NOBODY = (65534, 65534)


def container_user(settings: Settings) -> tuple[int, int] | None:
    """The container's uid and gid: the worker's own, so that it owns the outputs it uploads and
    deletes; for a root worker, `job_user`'s (else nobody's), since root in the container would be
    root on the node's files it sees. None where the engine's default applies (Windows)."""
    if os.name != "posix":
        return None
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    return job_user_ids(settings) or NOBODY


def _posix_give_to_job_user(dirs: AttemptDirs, uid: int, gid: int) -> None:
    """Let the container's user write what a job writes: its attempt's folder (the events file, new
    files in the working directory), output, checkpoints (restored ones too) and code. Not data,
    whose files are hard links into the node's dataset cache; never through a link. (Unlike the
    process backend's `job_user.prepare`, the attempt's folder itself is the job's: the job sees it
    only through the container, where the data mount cannot be moved, and the worker reads its log
    without following a link.)"""
    os.chown(dirs.root, uid, gid, follow_symlinks=False)
    for tree in (dirs.output, dirs.checkpoints, dirs.code):
        if not tree.is_symlink() and tree.is_dir():
            chown_tree(tree, uid, gid)
