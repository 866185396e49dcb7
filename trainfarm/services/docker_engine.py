"""A private Docker engine (dockerd as root), for the Docker backend's tests and trials on one machine.

It has no bridge network and touches no firewall rules (job containers run with no network), keeps
its images and containers in `data_dir`, and leaves the host's own Docker engine, if any, alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import docker
import requests
from docker.errors import DockerException

from trainfarm.services.process import ManagedProcess


def unavailable_reason() -> str | None:
    """Why no private engine can run here (None when one can), so tests can skip loudly."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a private dockerd needs root on Linux"
    if shutil.which("dockerd") is None:
        return "dockerd not found (install docker.io; scripts/bootstrap does when run as root)"
    return None


class DockerEngine(ManagedProcess):
    """dockerd with its socket, state and containerd under a short temp dir, images under `data_dir`.

    :param data_dir: the engine's data root (images, containers) and `dockerd.log`.
    """

    name = "dockerd"
    ready_timeout = 60.0
    stop_timeout = 30.0  # it stops its containers first

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.binary = shutil.which("dockerd") or "dockerd"
        # Unix socket paths are limited to ~100 bytes: the API socket and containerd's sockets
        # (deep under the exec root) must not depend on how deep data_dir is.
        self.run_dir = Path(tempfile.mkdtemp(prefix="tfd-"))

    @property
    def url(self) -> str:
        return f"unix://{self.run_dir / 'docker.sock'}"

    def client(self, timeout: float = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, version="auto", timeout=int(timeout))

    def _prepare(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--host", self.url,
            "--data-root", str((self.data_dir / "data").resolve()),
            "--exec-root", str(self.run_dir / "x"),
            "--pidfile", str(self.run_dir / "docker.pid"),
            "--bridge=none", "--iptables=false", "--ip6tables=false",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            with docker.APIClient(base_url=self.url, version="auto", timeout=2) as api:
                return bool(api.ping())
        except (DockerException, requests.RequestException):
            return False

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        shutil.rmtree(self.run_dir, ignore_errors=True)
