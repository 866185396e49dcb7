"""The Docker backend: the job runs in its image, in a container with no network that sees its
attempt's directories (datasets read-only) and exactly the GPUs given to it."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

import docker
import requests
from docker.errors import DockerException, ImageNotFound
from docker.models.containers import Container
from docker.types import DeviceRequest, Mount

from shared.errors import FinalError, RetryableError
from shared.schemas import JobSpec
from shared.settings import PROJECT_ROOT, Settings
from worker.backends.base import Backend, Launch
from worker.backends.docker_execution import DockerExecution
from worker.jobenv import AttemptDirs, job_environment

#: Where a container sees its attempt's directory (data, output, checkpoints, code, events file).
CONTAINER_ROOT = "/trainfarm"
#: trainfarm's own packages, bound read-only and importable in every job container, so user code can
#: `from worker.runtime import TrainfarmCallback` (stdlib, NumPy, torch and Lightning suffice) and a
#: recipe runs in any image that has its libraries, without trainfarm installed there.
CONTAINER_LIBRARY = "/opt/trainfarm"
LIBRARY_PACKAGES = ("worker", "shared")
#: On every job container; `remove_orphans` finds a dead worker's containers by the node label.
NODE_LABEL, JOB_LABEL, ATTEMPT_LABEL = "trainfarm.node", "trainfarm.job", "trainfarm.attempt"


def docker_client(settings: Settings, timeout: float = 60) -> docker.DockerClient:
    """A client of the configured engine (else DOCKER_HOST or the platform default), speaking the
    engine's own API version: an older engine refuses the SDK's newest."""
    if settings.docker_host:
        return docker.DockerClient(base_url=settings.docker_host, version="auto", timeout=int(timeout))
    return docker.from_env(version="auto", timeout=int(timeout))


def remove_orphans(client: docker.DockerClient, node_name: str) -> int:
    """Remove the job containers of this node still there when its worker starts: a worker killed
    with -9 never removed them, and their attempts were declared lost and run again elsewhere."""
    leftovers = client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node_name}"})
    for container in leftovers:
        container.remove(force=True)
    return len(leftovers)


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
        container = self.create(launch)
        try:
            # Attached before the start, so no line is missed; not the log stream, which can end
            # before the engine has logged an unterminated last line.
            stream = self._client.api.attach(container.id, stdout=True, stderr=True, stream=True)
            execution = DockerExecution(self._client, container.id, stream)
            container.start()
        except (DockerException, requests.RequestException) as exc:
            # Best effort: if the engine is away, the worker's next start removes it (labelled).
            with contextlib.suppress(DockerException, requests.RequestException):
                container.remove(force=True)
            raise RetryableError(f"container of {launch.message.spec.image} did not start: {exc}") from exc
        return execution

    def create(self, launch: Launch) -> Container:
        """The attempt's container, created but not started (the tests read its settings here)."""
        spec = launch.message.spec
        if spec.image is None:
            raise FinalError("the Docker backend runs jobs that name an 'image'", field="image")
        self._ensure_image(spec.image)
        inside = AttemptDirs.inside(CONTAINER_ROOT)
        environment = job_environment(launch.message, inside)
        environment.update(
            PYTHONUNBUFFERED="1",
            PYTHONPATH=CONTAINER_LIBRARY,
            HOME="/tmp",
            # The NVIDIA runtime reads this too: set, an image's ENV ...=all cannot expose every GPU.
            NVIDIA_VISIBLE_DEVICES=",".join(str(g) for g in launch.gpus) or "void",
        )
        workdir = inside.root.joinpath(*launch.workdir.relative_to(launch.dirs.root).parts)
        job, attempt = str(launch.message.job_id), str(launch.message.attempt)
        try:
            return self._client.containers.create(
                spec.image,
                launch.argv,
                name=f"trainfarm-{job}-{attempt}-{uuid.uuid4().hex[:8]}",
                labels={NODE_LABEL: self._settings.node_name, JOB_LABEL: job, ATTEMPT_LABEL: attempt},
                environment=environment,
                working_dir=str(workdir),
                mounts=self._mounts(launch.dirs),
                network_mode="none",
                tmpfs={"/tmp": "rw,exec,mode=1777"},
                shm_size=self._settings.docker_shm_size,
                device_requests=gpu_requests(launch.gpus),
                # An init as PID 1 hands SIGTERM to the job (which, as PID 1, would not die of it) and reaps.
                init=True,
                **limits(spec),
                **run_as_worker_user(),
            )
        except (DockerException, requests.RequestException) as exc:
            raise RetryableError(
                f"container of {spec.image} not created on {self._settings.node_name}: {exc}"
            ) from exc

    def _ensure_image(self, image: str) -> None:
        try:
            self._client.images.get(image)
            return
        except ImageNotFound:
            why = "pulling is off (TRAINFARM_DOCKER_PULL=false)"
        if self._settings.docker_pull:
            try:
                self._client.images.pull(image)
                return
            except (DockerException, requests.RequestException) as exc:
                why = getattr(exc, "explanation", None) or str(exc)  # the registry's answer, not the URL
        node = self._settings.node_name
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


def gpu_requests(gpus: tuple[int, ...]) -> list[DeviceRequest]:
    if not gpus:
        return []
    return [DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])]


def limits(spec: JobSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.memory_mb is not None:
        out["mem_limit"] = out["memswap_limit"] = f"{spec.memory_mb}m"  # the same: no swap on top
    if spec.cpus is not None:
        out["nano_cpus"] = round(spec.cpus * 1e9)
    return out


def run_as_worker_user() -> dict[str, str]:
    """Outputs are owned by the worker's user, who uploads and deletes them, not by root."""
    if os.name == "posix":
        return {"user": f"{os.getuid()}:{os.getgid()}"}
    return {}
