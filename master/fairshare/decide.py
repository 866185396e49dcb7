"""The admission decision for one queue: which waiting jobs start now, and which running ones to
preempt. Pure (no database, no clock): everything it weighs is handed in, so it is tested exactly.

Order among jobs that may start: higher priority first; at equal priority the user with the least
decayed usage, then the user holding fewer devices (two new users take turns), then submission
order. A user at their device cap drops out of this decision; the others go on. The first job that
does not fit stops the queue (no job behind it goes around it), so a job asking for many devices
is not passed over for ever by small ones; with preemption on, it may stop running jobs of lower
priority to make room.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from master.fairshare.capacity import QueueCapacity
from master.fairshare.caps import CapBook
from master.fairshare.holdings import Holding
from master.fairshare.preemption import PreemptionPolicy, choose_victims, eligible
from master.fairshare.waiting import Rank, WaitingJob, WaitingSet


class Short(StrEnum):
    """What the queue's first job that could not start lacked."""

    WORKERS = "workers"  # no online worker serves the queue
    SLOTS = "slots"  # every job slot is taken
    DEVICES = "devices"  # fewer GPUs free than it asks for
    BLOCK = "block"  # enough GPUs free, but not on one worker


@dataclass(frozen=True)
class Stop:
    job: WaitingJob
    short: Short
    free_devices: int
    #: Most GPUs free on one worker.
    free_block: int


@dataclass
class QueueDecision:
    queue: str
    capacity: QueueCapacity
    admit: list[WaitingJob] = field(default_factory=list)
    preempt: list[Holding] = field(default_factory=list)
    #: The first job that could not start, and why; None when every candidate started.
    stop: Stop | None = None
    #: Users whose next job would pass their device cap: (devices held, cap).
    capped: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Devices and slots in use once the admitted jobs run.
    used_devices: int = 0
    used_slots: int = 0
    #: Devices each user holds on the queue before this decision.
    held: dict[str, int] = field(default_factory=dict)
    #: Running jobs already on their way out (preempted, not yet ended), and their devices.
    leaving: int = 0
    freeing: int = 0


def decide_queue(
    queue: str,
    waiting: WaitingSet,
    holdings: Sequence[Holding],
    capacity: QueueCapacity,
    caps: CapBook,
    usage: Mapping[tuple[str, str], float],
    policy: PreemptionPolicy,
    now: float,
) -> QueueDecision:
    held: dict[str, int] = {}
    for h in holdings:
        held[h.owner] = held.get(h.owner, 0) + h.devices
    decision = QueueDecision(queue, capacity, held=dict(held))
    decision.used_devices = sum(h.devices for h in holdings)
    decision.used_slots = len(holdings)
    decision.leaving = sum(1 for h in holdings if h.preempting)
    decision.freeing = sum(h.devices for h in holdings if h.preempting)
    free_slots = capacity.slots - decision.used_slots
    free_devices = capacity.gpus - decision.used_devices
    blocks = _free_blocks(capacity, holdings)

    users = waiting.users(queue)
    heap: list[tuple[int, float, int, int, str, int]] = []

    def push(user: str, index: int) -> None:
        ranks = users[user]
        if index < len(ranks):
            priority, job_id = ranks[index]
            heapq.heappush(
                heap, (priority, usage.get((user, queue), 0.0), held.get(user, 0), job_id, user, index)
            )

    for user in users:
        push(user, 0)
    while heap:
        *_, user, index = heapq.heappop(heap)
        job = waiting.job(users[user][index])
        cap = caps.of(user, queue)
        if not cap.devices_allow(held.get(user, 0), job.devices):
            decision.capped[user] = (held.get(user, 0), cap.max_devices)
            continue
        short = _short(capacity, free_slots, free_devices, blocks, job.devices)
        if short is not None:
            decision.stop = Stop(job, short, max(free_devices, 0), max(blocks, default=0))
            if policy.enabled and short in (Short.SLOTS, Short.DEVICES):
                decision.preempt = _victims(job, holdings, capacity, free_slots, free_devices, policy, now)
            break
        decision.admit.append(job)
        free_slots -= 1
        if capacity.counts_gpus:
            free_devices -= job.devices
            _take_block(blocks, job.devices)
        held[user] = held.get(user, 0) + job.devices
        decision.used_slots += 1
        decision.used_devices += job.devices
        push(user, index + 1)
    return decision


def _short(
    capacity: QueueCapacity, free_slots: int, free_devices: int, blocks: list[int], devices: int
) -> Short | None:
    if capacity.slots == 0:
        return Short.WORKERS
    if free_slots < 1:
        return Short.SLOTS
    if capacity.counts_gpus:
        if devices > free_devices:
            return Short.DEVICES
        if not any(b >= devices for b in blocks):
            return Short.BLOCK
    return None


def _free_blocks(capacity: QueueCapacity, holdings: Sequence[Holding]) -> list[int]:
    """GPUs free on each GPU worker of the queue: those its running attempts hold are taken off it,
    and attempts on their way are placed where they fit best (as a worker with room will take them)."""
    if not capacity.counts_gpus:
        return []
    free = {w.key: w.gpus for w in capacity.workers if w.gpus}
    placed = [h for h in holdings if h.worker in free]
    for h in placed:
        free[h.worker] -= h.devices  # type: ignore[index]
    blocks = list(free.values())
    for h in holdings:
        if h.worker not in free:
            _take_block(blocks, h.devices)
    return blocks


def _take_block(blocks: list[int], devices: int) -> None:
    """Place `devices` on the worker with the fewest free GPUs that still holds them (best fit)."""
    fitting = [i for i, b in enumerate(blocks) if b >= devices]
    if fitting:
        best = min(fitting, key=lambda i: blocks[i])
        blocks[best] -= devices
    elif blocks:  # it does not fit anywhere by our count: take it from the freest
        best = max(range(len(blocks)), key=lambda i: blocks[i])
        blocks[best] -= devices


def _victims(
    job: WaitingJob,
    holdings: Sequence[Holding],
    capacity: QueueCapacity,
    free_slots: int,
    free_devices: int,
    policy: PreemptionPolicy,
    now: float,
) -> list[Holding]:
    """Running jobs to preempt for `job`, beyond those already on their way out; none when even
    all that may be preempted would not make room."""
    leaving = [h for h in holdings if h.preempting]
    need_slots = 1 - free_slots - len(leaving)
    need_devices = 0
    if capacity.counts_gpus:
        need_devices = job.devices - free_devices - sum(h.devices for h in leaving)
    candidates = [h for h in holdings if eligible(h, job.priority, now, policy)]
    return choose_victims(candidates, need_slots, need_devices) or []


def ahead_of(
    job: WaitingJob,
    users: Mapping[str, list[Rank]],
    usage: Mapping[tuple[str, str], float],
    held: Mapping[str, int],
    skip: set[str],
) -> int:
    """How many ready jobs come before `job` in its queue's order (users in `skip`, at their cap, do
    not count): per user, a bisection of their ranks, since a user's jobs keep their own order."""

    mine = (usage.get((job.owner, job.queue), 0.0), held.get(job.owner, 0))
    count = 0
    for user, ranks in users.items():
        if user in skip:
            continue
        theirs = (usage.get((user, job.queue), 0.0), held.get(user, 0))
        if user == job.owner:
            count += bisect.bisect_left(ranks, job.rank)
        elif theirs < mine:
            count += bisect.bisect_right(ranks, (-job.priority, 2**63))
        elif theirs > mine:
            count += bisect.bisect_left(ranks, (-job.priority, -(2**63)))
        else:
            count += bisect.bisect_left(ranks, job.rank)
    return count
