"""Warnings on a job: what the farm noticed about it without ending it, newest last."""

from __future__ import annotations

from master.models import Job

#: Warnings a job keeps; older ones give way, so a job that keeps misbehaving cannot grow its row.
MAX_WARNINGS = 20
#: Characters per warning.
MAX_WARNING_CHARS = 500


def add_warning(job: Job, message: str) -> None:
    """Append `message` to the job's warnings (the caller adds the job to its session and commits)."""
    if len(message) > MAX_WARNING_CHARS:
        message = message[: MAX_WARNING_CHARS - 1] + "…"
    # A new list, not an append: the JSON column sees assignments, not changes inside the list.
    job.warnings = [*(job.warnings or []), message][-MAX_WARNINGS:]
