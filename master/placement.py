"""Refusing at submit time a job no online node could ever run: more devices than any node has.

A job that fits some node but finds its devices busy is accepted and waits in the queue; with no
node online at all (the farm is starting, or the nodes reboot) it is accepted too, and waits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlmodel import Session, select

from master.models import Node
from master.nodes import to_public
from shared.errors import InvalidRequest
from shared.schemas import JobSpec


@dataclass(frozen=True)
class Largest:
    node: str
    devices: int
    kind: str  # "GPUs", or "CPU cores" on a node without GPUs


def node_devices(info: dict, queue: str) -> tuple[int, str]:
    """What `devices` means on a node: on the gpu queue the most GPUs one of its workers hands out
    (a job runs under one worker: two workers with GPUs 0,1 and 2,3 cannot run a 4-GPU job); else,
    or on a node without GPUs, its CPU cores (DDP processes)."""
    if queue == "gpu":
        workers = info.get("workers")
        beats = [w for w in workers if isinstance(w, dict)] if isinstance(workers, list) else [info]
        most = max((len(s) for b in beats if isinstance(s := b.get("gpu_slots"), list)), default=0)
        if most:
            return most, "GPUs"
    cores = info.get("cpu_count")
    return (cores if isinstance(cores, int) else 1), "CPU cores"


def largest_online(session: Session, offline_after: float) -> dict[str, Largest]:
    """Per queue, the online node with the most devices."""
    largest: dict[str, Largest] = {}
    for row in session.exec(select(Node)):
        node = to_public(row, offline_after)
        if not node.online:
            continue
        for queue in node.queues:
            devices, kind = node_devices(node.info, queue)
            if queue not in largest or devices > largest[queue].devices:
                largest[queue] = Largest(node.name, devices, kind)
    return largest


def check_fits(spec: JobSpec, largest: dict[str, Largest], field: str = "devices") -> None:
    best = largest.get(spec.queue)
    if best is not None and spec.devices > best.devices:
        raise InvalidRequest(
            f"asks for {spec.devices} devices, but the largest online node on queue '{spec.queue}' "
            f"({best.node}) has {best.devices} {best.kind}",
            field=field,
        )


class Capacities:
    """`largest_online`, read from the database at most once per `ttl` seconds: nodes beat every
    few seconds, while submissions can come by the hundred each second."""

    def __init__(self, offline_after: float, ttl: float = 1.0) -> None:
        self._offline_after = offline_after
        self._ttl = ttl
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._largest: dict[str, Largest] = {}

    def largest(self, session: Session) -> dict[str, Largest]:
        with self._lock:
            if time.monotonic() - self._read_at > self._ttl:
                self._largest = largest_online(session, self._offline_after)
                self._read_at = time.monotonic()
            return self._largest
