"""A private Docker engine and a job image for the Docker backend's tests, with no registry.

The image is an empty root filesystem; the host's /usr, this Python, its venv and the checkout are
mounted read-only at their own paths (`docker_mounts`), so `python` in the container is the
worker's own, with torch and Lightning, and runs with no network.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from trainfarm.services.docker_engine import DockerEngine, unavailable_reason

ON_CI = os.environ.get("CI") == "true"
TEST_IMAGE = "trainfarm-test:latest"


def host_mounts() -> list[str]:
    """Read-only binds of the host paths the job's Python needs, each at its own path; a path
    inside another one is left to it. Not the checkout: the backend binds trainfarm's packages
    itself, and the tests prove that it does."""
    paths = sorted({Path("/usr"), Path(sys.base_prefix), Path(sys.prefix)})
    kept = [p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)]
    return [f"{p}:{p}:ro" for p in kept]


def docker_settings(settings: Settings, engine: DockerEngine) -> Settings:
    """`settings` for a worker that runs the test image on `engine` and never pulls."""
    return settings.model_copy(
        update={"docker_host": engine.url, "docker_mounts": host_mounts(), "docker_pull": False}
    )


#: A setuid-root copy of `id` in the test image: with no-new-privileges it must not run as root.
SETUID_ID = "/sbin/setuid-id"


def _rootfs_tar() -> bytes:
    """A root with the usual merged-/usr links, the mount points, users for the worker's uid and
    nobody (a root worker's jobs), and a setuid-root binary (SETUID_ID)."""
    uid, gid = (os.getuid(), os.getgid()) if os.name == "posix" else (0, 0)
    users = "root:x:0:0:root:/root:/bin/sh\n" + (f"worker:x:{uid}:{gid}::/tmp:/bin/sh\n" if uid else "")
    users += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    groups = "root:x:0:\n" + (f"worker:x:{gid}:\n" if gid else "") + "nogroup:x:65534:\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        # sbin is a real directory: the engine places its init at /sbin/docker-init.
        for name, mode in [("tmp", 0o1777), ("proc", 0o755), ("sys", 0o755), ("dev", 0o755),
                           ("etc", 0o755), ("usr", 0o755), ("sbin", 0o755)]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for name in ("bin", "lib", "lib64"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{name}"
            tar.addfile(info)
        for name, text in [("etc/passwd", users), ("etc/group", groups)]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        setuid = Path("/usr/bin/id")
        if setuid.is_file():
            info = tarfile.TarInfo(SETUID_ID.lstrip("/"))
            info.size, info.mode, info.uid, info.gid = setuid.stat().st_size, 0o4755, 0, 0
            with setuid.open("rb") as binary:
                tar.addfile(info, binary)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def docker_engine(services_dir: Path) -> Iterator[DockerEngine]:
    reason = unavailable_reason()
    if reason is not None:
        if ON_CI:
            pytest.fail(f"no Docker engine for the Docker backend tests: {reason}")
        pytest.skip(f"LOUD SKIP: {reason}; the Docker backend tests did not run")
    with DockerEngine(services_dir / "docker") as engine:
        yield engine


@pytest.fixture(scope="session")
def docker_image(docker_engine: DockerEngine) -> str:
    """The test image, imported into the private engine."""
    repository, tag = TEST_IMAGE.split(":")
    path = f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin"
    with docker_engine.client().api as api:
        api.import_image_from_data(
            _rootfs_tar(), repository=repository, tag=tag, changes=[f"ENV PATH={path}"]
        )
    return TEST_IMAGE
