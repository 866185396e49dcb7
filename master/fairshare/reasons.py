"""The sentence a person reads on a queued job: why it has not started, as the last decision saw it."""

from __future__ import annotations

from datetime import UTC, datetime

from master.fairshare.decide import QueueDecision, Short, Stop


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def device_noun(decision: QueueDecision) -> str:
    return "GPU" if decision.capacity.counts_gpus else "device"


def over_cap(user: str, held: int, cap: int, decision: QueueDecision) -> str:
    who = user or "jobs without an owner"
    return f"waiting: {who} already uses {held} of their {plural(cap, device_noun(decision))} on {decision.queue}"


def stopped(stop: Stop, decision: QueueDecision) -> str:
    """Why the queue's first job that did not fit waits (every job behind it waits for it too)."""
    queue = decision.queue
    match stop.short:
        case Short.WORKERS:
            return f"waiting: no worker online takes jobs from queue {queue}"
        case Short.SLOTS:
            return f"waiting: no free worker slot on {queue} ({decision.used_slots} in use)"
        case Short.DEVICES if stop.free_devices == 0:
            return f"waiting: no free GPU on {queue} ({decision.used_devices} in use)"
        case Short.DEVICES:
            return f"waiting: needs {plural(stop.job.devices, 'GPU')}, {stop.free_devices} free on {queue}"
        case _:
            return (
                f"waiting: needs {plural(stop.job.devices, 'GPU')} on one worker; "
                f"the most free on one worker of {queue} is {stop.free_block}"
            )


def preempting(leaving: int) -> str:
    return f"; {plural(leaving, 'job')} of lower priority being preempted for it" if leaving else ""


def backoff(not_before: float) -> str:
    when = datetime.fromtimestamp(not_before, UTC).strftime("%H:%M:%S UTC")
    return f"waiting: retry backoff until {when}"


def behind(first: str, ahead: int) -> str:
    return f"{first}; {plural(ahead, 'job')} ahead"


def starting(queue: str, admitted_at: datetime) -> str:
    return f"starting: sent to the {queue} queue at {admitted_at.strftime('%H:%M:%S UTC')}"


NOT_SEEN = "waiting: admission has not looked at it yet"
