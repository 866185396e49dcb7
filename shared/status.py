"""Job and attempt states, with the only transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Stopped early by its sweep because its objective lagged the other trials' (master/sweeps/);
    #: a final state of its own, so a sweep's pruned trials are not counted as failures.
    PRUNED = "pruned"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED})

#: A late or repeated report never moves a job backwards: "running" after "succeeded" is dropped.
#: running -> queued is a retry: the attempt ended and a new one was enqueued. A job is pruned
#: (by its sweep) while it waits or runs; its attempt ends `cancelled`, as a stopped attempt does.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.PRUNED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED, JobStatus.PRUNED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.PRUNED: frozenset(),
}

#: An attempt runs at most once: it never goes back to queued (a retry is a new attempt), and it
#: cannot succeed without having started. Attempts share the job's status names.
ATTEMPT_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.PRUNED: frozenset(),
}


def can_move(current: JobStatus, new: JobStatus) -> bool:
    """Whether a job may go from `current` to `new`."""
    return new in ALLOWED[current]


def can_move_attempt(current: JobStatus, new: JobStatus) -> bool:
    """Whether an attempt may go from `current` to `new`."""
    return new in ATTEMPT_ALLOWED[current]
