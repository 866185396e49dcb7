"""The execution backend interface: how an attempt's process is started, watched and stopped.

The attempt runner does everything else (lease, datasets, code, checkpoints, logs, uploads); a backend
only turns a `Launch` into a running `Execution`. Two implementations: `process` (the worker's own or a
named conda/venv environment) and `docker` (the job's image). Both pass `tests/test_backends.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.schemas import TaskMessage
from worker.jobenv import AttemptDirs


@dataclass(frozen=True)
class Launch:
    """One attempt's process, as the runner asks for it."""

    message: TaskMessage
    #: The attempt's directories on this node (data, output, checkpoints, events file, spec, code).
    dirs: AttemptDirs
    #: The command; a leading "python" means the interpreter of the environment it runs in.
    argv: list[str]
    #: Where the command runs, on this node: the unpacked code bundle, or the attempt's root.
    workdir: Path
    #: GPU indices on this node given to this attempt alone; empty on a CPU node or a cpu-queue job.
    gpus: tuple[int, ...] = ()


class Execution(ABC):
    """A started process (or container) of one attempt."""

    @abstractmethod
    def output(self) -> Iterator[bytes]:
        """Its combined stdout and stderr, line by line (each ending in b"\\n" but maybe the last),
        until it exits; read on one thread while another polls."""

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code once it has exited, else None; never blocks for long."""

    @abstractmethod
    def stop(self, grace: float) -> None:
        """Ask it (its whole tree) to stop, and kill what still runs after `grace` seconds."""

    @abstractmethod
    def wait(self) -> int:
        """Block until it has exited; its exit code."""

    @abstractmethod
    def close(self) -> None:
        """Release what it holds (a container is removed); idempotent, called in every outcome."""


class Backend(ABC):
    name: str

    @abstractmethod
    def start(self, launch: Launch) -> Execution:
        """Start the attempt's process; a `shared.errors.FinalError` for what no retry can fix
        (an environment or image that is not there)."""
