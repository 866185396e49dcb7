"""What the online nodes offer each queue, read from their heartbeats (the nodes table).

Each worker of a node beats its queues, its pool size (`concurrency`: attempts it runs at once) and
the GPUs it hands out. A queue's capacity is then its workers' job slots and, on the gpu queue, their
GPUs; a worker that is paused (draining, disk full) offers nothing. On a node without GPUs a job's
`devices` are processes on its cores, so there only job slots count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from master.models import Node
from master.nodes import to_public


@dataclass(frozen=True)
class WorkerOffer:
    key: str
    slots: int
    gpus: int


@dataclass
class QueueCapacity:
    queue: str
    #: Attempts the queue's workers run at once.
    slots: int = 0
    #: GPUs they hand out (gpu queue only); 0: jobs are counted in slots alone.
    gpus: int = 0
    workers: list[WorkerOffer] = field(default_factory=list)

    @property
    def counts_gpus(self) -> bool:
        return self.gpus > 0


def capacity_of(nodes: Iterable[Node], offline_after: float) -> dict[str, QueueCapacity]:
    """Per queue, what its online, unpaused workers offer."""
    out: dict[str, QueueCapacity] = {}
    for row in nodes:
        node = to_public(row, offline_after)
        if not node.online:
            continue
        for beat in _worker_beats(node.info):
            if beat.get("paused"):
                continue
            queues = beat.get("queues")
            slots = beat.get("concurrency")
            gpu_slots = beat.get("gpu_slots")
            key = beat.get("worker")
            for queue in queues if isinstance(queues, list) else []:
                if not isinstance(queue, str):
                    continue
                cap = out.setdefault(queue, QueueCapacity(queue))
                gpus = len(gpu_slots) if queue == "gpu" and isinstance(gpu_slots, list) else 0
                offer = WorkerOffer(
                    key if isinstance(key, str) else node.name,
                    slots if isinstance(slots, int) and slots > 0 else 1,
                    gpus,
                )
                cap.workers.append(offer)
                cap.slots += offer.slots
                cap.gpus += offer.gpus
    return out


def _worker_beats(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The node's workers' own parts (`nodes.merge_beats`); an older beat without them is one worker."""
    workers = info.get("workers")
    if isinstance(workers, list):
        return [w for w in workers if isinstance(w, dict)]
    return [info] if info else []


def fingerprint(capacity: dict[str, QueueCapacity]) -> tuple[tuple[str, int, int], ...]:
    """What admission's decisions depend on: a node sync that leaves it unchanged needs no decision."""
    return tuple(sorted((q, c.slots, c.gpus) for q, c in capacity.items()))
