"""Who this worker is: its node name plus an instance id made when the worker process starts.

Several workers may run on one machine under one node name (the hostname, by default): one per GPU
group, or a CPU worker beside a GPU one. Each gets an identity of its own, on its own, without any
coordination: the instance id is random. Whatever is about "this worker" is keyed by the identity
(`key`, `node#instance`): its drain flag, the attempts it runs, its heartbeat, its job containers. So
stopping one worker never drains, sweeps or hides another on the same machine. What belongs to the
machine stays shared by name and place: the node name in events and in `trainfarm nodes`, and the GPU
lock files in the work directory, which is what keeps two workers from handing out one GPU twice.

The Celery main process makes the identity on `worker_init`, before its pool starts; prefork pool
children are forked from it and inherit it, solo and threads pools are that one process.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from shared.settings import get_settings
from shared.streams import WORKER_KEY_SEPARATOR


@dataclass(frozen=True)
class WorkerIdentity:
    node: str
    instance: str
    #: The Celery main process, which outlives its pool children.
    pid: int

    @property
    def key(self) -> str:
        return f"{self.node}{WORKER_KEY_SEPARATOR}{self.instance}"


_current: WorkerIdentity | None = None


def establish(node: str | None = None) -> WorkerIdentity:
    """Give this process a new identity; the worker's main process calls it once, at start."""
    global _current
    _current = WorkerIdentity(node or get_settings().node_name, uuid.uuid4().hex[:8], os.getpid())
    return _current


def current() -> WorkerIdentity:
    """This worker's identity; made here for a process that was never started as a worker (a
    task run in a test, say), which then is a worker of its own."""
    return _current or establish()
