"""A long-running backing service started as a child process, with readiness polling and clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Self

#: Log lines quoted in the error when a service fails to come up.
LOG_TAIL_LINES = 40
POLL_INTERVAL = 0.1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports; the sockets stay bound until all are picked so none repeats."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


class ManagedProcess(ABC):
    """Runs `_command()` in its own process group, logging to `<data_dir>/<name>.log`.

    Subclasses say how to start (`_command`, optional `_prepare`) and when the service answers
    (`is_ready`, optional `_after_ready`). `start()` waits for readiness unless told not to, so
    several services can be launched first and awaited together.
    """

    #: Short service name, used for the log file and in error messages; may be set per instance.
    name: str = "process"
    #: Default seconds `start()` waits for `is_ready()`.
    ready_timeout: ClassVar[float] = 30.0
    #: Signal asking for a graceful shutdown (POSIX only; Windows always terminates).
    stop_signal: ClassVar[int] = signal.SIGTERM
    #: Default seconds `stop()` waits after `stop_signal` before killing.
    stop_timeout: ClassVar[float] = 10.0

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @abstractmethod
    def _command(self) -> list[str]:
        """The argv to run; called on every start."""

    @abstractmethod
    def is_ready(self) -> bool:
        """Whether the service answers requests; must return False, not raise, while it boots."""

    # Optional hooks: no-ops unless a service needs them.
    def _prepare(self) -> None:  # noqa: B027
        """Runs before each spawn (write config files, create the on-disk state)."""

    def _after_ready(self) -> None:  # noqa: B027
        """Runs once the service answers, on each start (must be idempotent)."""

    def _workdir(self) -> Path:
        return self.data_dir

    def _env(self) -> dict[str, str] | None:
        """The child's environment; None inherits ours."""
        return None

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, wait: bool = True, timeout: float | None = None) -> Self:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        try:
            self._prepare()
            argv = self._command()
            self._log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {argv}\n".encode())
            self._log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir(),
                env=self._env(),
                **_new_group_kwargs(),
            )
        except BaseException:
            self.stop()  # closes the log
            raise
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll `is_ready()`; on exit or timeout stop the process and raise with the log tail."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self.name} was not started")
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited with code {code} while starting{self._log_tail()}")
            if self.is_ready():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} was not ready after {timeout:.0f}s{self._log_tail()}")
            time.sleep(POLL_INTERVAL)
        self._after_ready()

    def stop(self, timeout: float | None = None) -> None:
        """Ask for a graceful stop, kill the whole group after `timeout` s; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _terminate(proc, self.stop_signal)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, wait: bool = True, timeout: float | None = None) -> Self:
        self.stop()
        return self.start(wait=wait, timeout=timeout)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.data_dir} pid={self.pid}>"

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError as exc:
            return f" (log {self.log_path} unreadable: {exc})"
        return f"; last lines of {self.log_path}:\n" + "\n".join(lines)


def _new_group_kwargs() -> dict[str, Any]:
    # A group of its own: Ctrl-C in the parent's terminal doesn't reach the service, and stop()
    # can signal every process the service spawned.
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _terminate(proc: subprocess.Popen[bytes], sig: int) -> None:
    if sys.platform == "win32":
        proc.terminate()
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return  # the group exited between poll() and here: nothing left to stop


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if sys.platform == "win32":
        proc.kill()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return  # already gone
