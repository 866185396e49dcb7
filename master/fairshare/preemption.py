"""Which running jobs to preempt so that a job of higher priority can start: the fewest, newest first.

Pure: the admitter hands in the candidates (running, preemptible, of lower priority, not preempted
within the grace) and what is missing; it sets the flags and the workers do the stopping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from master.fairshare.holdings import Holding


@dataclass(frozen=True)
class PreemptionPolicy:
    enabled: bool
    #: Seconds after a preemption during which a job is not preempted again.
    grace: float


def eligible(holding: Holding, priority: int, now: float, policy: PreemptionPolicy) -> bool:
    """Whether `holding` may be preempted for a job of `priority`."""
    recently = holding.last_preempted is not None and now - holding.last_preempted < policy.grace
    return (
        holding.started is not None
        and holding.preemptible
        and not holding.preempting
        and holding.priority < priority
        and not recently
    )


def choose_victims(candidates: Sequence[Holding], slots: int, devices: int) -> list[Holding] | None:
    """The fewest candidates that free `slots` job slots and `devices` devices together, preferring
    the newest (latest started); None when all of them would not be enough.

    The count is the least any choice needs; then, going from the newest, a candidate is taken
    whenever the rest can still be made up by the largest of the older ones.
    """
    slots, devices = max(slots, 0), max(devices, 0)
    if slots == 0 and devices == 0:
        return []
    newest_first = sorted(candidates, key=lambda h: (-(h.started or 0.0), -h.job_id))
    largest = sorted((h.devices for h in newest_first), reverse=True)
    count = next((k for k in range(1, len(largest) + 1) if k >= slots and sum(largest[:k]) >= devices), None)
    if count is None:
        return None
    chosen: list[Holding] = []
    for i, holding in enumerate(newest_first):
        left = count - len(chosen) - 1
        if left < 0:
            break
        still = devices - sum(h.devices for h in chosen) - holding.devices
        older = sorted((h.devices for h in newest_first[i + 1 :]), reverse=True)
        if len(older) >= left and still <= sum(older[:left]):
            chosen.append(holding)
    return chosen
