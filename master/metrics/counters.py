"""The master's process-wide counters and histograms, and the helpers that observe an attempt's
waits. Every app's registry (registry.py) registers these same objects."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Counter, Histogram

from master.models import JobAttempt, as_utc

EVENTS_APPLIED = Counter("trainfarm_events_applied_total", "Worker events applied to the database", ["kind"])
JOBS_SUBMITTED = Counter("trainfarm_jobs_submitted_total", "Jobs accepted by the API", ["queue"])
#: reason: "invalid" (the entry is not an event of a known kind within bounds) or "apply" (applying it failed).
EVENTS_DEAD_LETTERED = Counter(
    "trainfarm_events_dead_lettered_total", "Worker events moved to tf:events:dead unapplied", ["reason"]
)
EVENTS_REFUSED = Counter(
    "trainfarm_events_refused_total",
    "Worker events ignored: they came from a worker other than the one holding the attempt",
)
HANDBACKS = Counter("trainfarm_handbacks_total", "Attempts handed back by a worker shutting down")
STATUS_MOVES_REFUSED = Counter(
    "trainfarm_status_moves_refused_total", "Status changes refused by the transition tables", ["entity"]
)
LOOP_ERRORS = Counter(
    "trainfarm_loop_errors_total", "Errors caught in the master's background loops", ["loop"]
)
ADMITTED = Counter("trainfarm_admitted_total", "Attempts admission let start (their messages sent)")
PREEMPTED = Counter("trainfarm_preempted_total", "Running attempts preempted for jobs of higher priority")
ADMISSION_SECONDS = Histogram(
    "trainfarm_admission_decision_seconds",
    "Time of one admission decision over every queue, acted on",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
)
#: Bucket bounds in seconds, from a free farm's moments to a busy one's hours.
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)
ADMISSION_WAIT = Histogram(
    "trainfarm_admission_wait_seconds",
    "Time an attempt waited for admission: from being queued (or its retry backoff ending) to admitted",
    ["queue"],
    buckets=WAIT_BUCKETS,
)
DISPATCH_LATENCY = Histogram(
    "trainfarm_dispatch_latency_seconds",
    "Time from an attempt's admission to its start on a worker (message, pick-up, set-up)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
HTTP_LATENCY = Histogram(
    "trainfarm_http_request_seconds",
    "API request latency",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

#: What every app's registry carries of the above, in registration order.
PROCESS_METRICS = (
    EVENTS_APPLIED,
    JOBS_SUBMITTED,
    HTTP_LATENCY,
    EVENTS_DEAD_LETTERED,
    EVENTS_REFUSED,
    HANDBACKS,
    STATUS_MOVES_REFUSED,
    LOOP_ERRORS,
    ADMITTED,
    PREEMPTED,
    ADMISSION_SECONDS,
    ADMISSION_WAIT,
    DISPATCH_LATENCY,
)


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (as_utc(end) - as_utc(start)).total_seconds())


def observe_admitted(queue: str, attempt: JobAttempt) -> None:
    """Count an attempt's wait for admission, once its `admitted_at` is set (the admitter)."""
    since = max(as_utc(t) for t in (attempt.created_at, attempt.not_before) if t is not None)
    if (wait := _seconds_between(since, attempt.admitted_at)) is not None:
        ADMISSION_WAIT.labels(queue).observe(wait)


def observe_started(attempt: JobAttempt) -> None:
    """Count an attempt's dispatch latency as it starts running (transitions.move_attempt)."""
    if (latency := _seconds_between(attempt.admitted_at, attempt.started_at)) is not None:
        DISPATCH_LATENCY.observe(latency)
