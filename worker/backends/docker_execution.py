"""A started job container, watched and stopped through the Docker engine's API."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import DockerException, NotFound

from shared.errors import RetryableError
from worker.backends.base import Execution
from worker.loglines import split_lines

log = logging.getLogger(__name__)

#: Exit code of a container whose process was killed (SIGKILL) or that vanished under us.
KILLED = 137
WAIT_POLL_SECONDS = 0.1


def lines(chunks: Iterable[bytes], max_line: int = sys.maxsize) -> Iterator[bytes]:
    """Whole lines out of a stream cut anywhere (the engine sends each write as it came); a line
    longer than `max_line` bytes is cut as it arrives, never held whole."""
    return split_lines(chunks, max_line)


class DockerExecution(Execution):
    def __init__(
        self,
        client: docker.DockerClient,
        container_id: str,
        stream: Iterable[bytes],
        max_line: int,
    ) -> None:
        self._api = client.api
        self.container_id = container_id
        #: The container's stdout and stderr, attached before it started.
        self._stream = stream
        #: Longest line kept whole, in bytes (settings.log_line_max_bytes).
        self._max_line = max_line
        self._code: int | None = None
        self._closed = False

    def output(self) -> Iterator[bytes]:
        try:
            yield from lines(self._stream, self._max_line)
        except (DockerException, requests.RequestException) as exc:
            yield f"[trainfarm] the container's output could not be read to its end: {exc}\n".encode()
            return
        if self._oom_killed():
            yield b"[trainfarm] the container ran out of memory and was killed (spec memory_mb)\n"

    def poll(self) -> int | None:
        if self._code is None:
            state = self._state()
            if state is None:  # removed under us (`docker rm -f`): as good as killed
                self._code = KILLED
            elif state["Status"] in ("exited", "dead"):
                self._code = int(state["ExitCode"])
        return self._code

    def stop(self, grace: float) -> None:
        # The engine sends SIGTERM (through the container's init, to the job's process), then SIGKILL.
        try:
            self._api.stop(self.container_id, timeout=math.ceil(grace))
        except NotFound:
            return
        except (DockerException, requests.RequestException) as exc:
            raise RetryableError(f"could not stop container {self.container_id[:12]}: {exc}") from exc

    def wait(self) -> int:
        # Polled rather than the engine's blocking wait, which the client's read timeout would cut short.
        while (code := self.poll()) is None:
            time.sleep(WAIT_POLL_SECONDS)
        return code

    def close(self) -> None:
        if self._closed:
            return
        closer = getattr(self._stream, "close", None)
        if closer is not None:  # the SDK leaves the attach socket to its caller
            with contextlib.suppress(Exception):
                closer()
        try:
            with contextlib.suppress(NotFound):  # already gone is what close() asks for
                self._api.remove_container(self.container_id, force=True)
        except (DockerException, requests.RequestException) as exc:
            # The worker's next start removes it (`remove_orphans`): it is labelled with this node.
            log.error("container %s could not be removed: %s", self.container_id[:12], exc)
            return
        self._closed = True

    @property
    def pid(self) -> int | None:
        """The container's first process as this machine sees it, so the usage sampler reads the
        container's processes as it reads a process job's tree (worker/usage_sampler.py); None
        where they are not this machine's (see `host_pid`)."""
        state = self._state_or_none()
        return None if state is None else host_pid(self.container_id, state)

    def _state_or_none(self) -> dict | None:
        """`_state`, None also while the engine is unreachable (the poll loop reports that)."""
        try:
            return self._state()
        except RetryableError:
            return None

    def _oom_killed(self) -> bool:
        state = self._state_or_none()
        return state is not None and bool(state.get("OOMKilled"))

    def _state(self) -> dict | None:
        """The container's State, None once it no longer exists."""
        try:
            return self._api.inspect_container(self.container_id)["State"]
        except NotFound:
            return None
        except (DockerException, requests.RequestException) as exc:
            raise RetryableError(f"Docker engine unreachable: {exc}") from exc


def host_pid(container_id: str, state: dict[str, Any], proc: Path = Path("/proc")) -> int | None:
    """The pid the engine reports for a container's first process, if it is a process of this
    machine's in that container: on Linux, with the engine on this kernel. Docker Desktop's engine
    runs in a VM and a remote engine elsewhere: their pids name unrelated processes here, or none,
    so the pid must also be in a cgroup named after the container (cgroup v1 and v2, systemd or
    cgroupfs driver: the container's id is in the path)."""
    if sys.platform != "linux":
        return None
    pid = state.get("Pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        cgroups = (proc / str(pid) / "cgroup").read_text()
    except OSError:  # gone already, or /proc hides other users' processes
        return None
    return pid if container_id in cgroups else None
