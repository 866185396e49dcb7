"""Attempts' resource use on the master: each sample a worker sends is stored, the job keeps a
summary of them, and the idle-GPU rule is judged on them.

The summary is `Job.progress["usage"]`, so it is shown and hidden with the job's progress:
`gpu_util_mean` (percent, over samples and GPUs), `gpu_mem_peak` and `gpu_mem_total` (bytes, of
the fullest GPU at its fullest), `cpu_percent_mean` (percent of one core), `rss_peak` (bytes),
`gpu_samples` and `cpu_samples`, and the rule's state: `idle_since` (Unix seconds, the worker's
clock), `gpu_idle` (flagged now) and `idle_stopped` (the reason, once the rule cancelled it).

The rule (dstack's utilization_policy, in trainfarm's terms): a running job whose GPUs all stay
under `gpu_idle_threshold` for `gpu_idle_after` seconds holds GPUs nobody else can use. It is
flagged once per idle spell (a warning on the job, `gpu_idle` for the page and the metrics), and
with `gpu_idle_stop` cancelled with an error that says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from sqlmodel import Session, col, select

from master import audit
from master.job_warnings import add_warning
from master.lifecycle import stop_job
from master.models import Job, JobAttempt, JobUsage
from shared.events import GpuUsage, Usage
from shared.settings import Settings
from shared.status import JobStatus

log = logging.getLogger(__name__)

#: Where the summary lives in `Job.progress`.
SUMMARY_KEY = "usage"


@dataclass(frozen=True)
class IdleRule:
    """When a job's GPUs count as idle (settings gpu_idle_threshold, gpu_idle_after, gpu_idle_stop)."""

    #: Share of a GPU (0..1) under which it counts as idle.
    threshold: float = 0.05
    #: Seconds every GPU of the job must stay under it.
    after: float = 1800.0
    #: Cancel the job once flagged, not only flag it.
    stop: bool = False

    @classmethod
    def of(cls, settings: Settings) -> IdleRule:
        return cls(settings.gpu_idle_threshold, settings.gpu_idle_after, settings.gpu_idle_stop)


DEFAULT_IDLE_RULE = IdleRule()


def record_usage(
    session: Session,
    job: Job,
    attempt: JobAttempt,
    data: Usage,
    at: datetime,
    current: bool,
    rule: IdleRule = DEFAULT_IDLE_RULE,
    broker: redis.Redis | None = None,
) -> None:
    """Store one sample (in the caller's transaction); the current attempt's also update the job's
    summary and the idle rule, which needs `broker` to cancel a job (without one it only flags)."""
    session.add(
        JobUsage(
            job_id=job.id,  # type: ignore[arg-type]
            attempt=attempt.number,
            ts=at,
            gpus=[g.model_dump() for g in data.gpus] if data.gpus else None,
            cpu_percent=data.cpu.percent if data.cpu else None,
            rss=data.cpu.rss if data.cpu else None,
        )
    )
    if not current:
        return
    summary = dict(job.progress.get(SUMMARY_KEY) or {})
    _summarize(summary, data)
    if data.gpus:
        _judge_idle(session, job, attempt.number, summary, data.gpus, at.timestamp(), rule, broker)
    # A new dict: the JSON column sees assignments, not changes inside it.
    job.progress = {**job.progress, SUMMARY_KEY: summary}


def _running_mean(mean: float | None, value: float, count: int) -> float:
    return value if mean is None or count <= 1 else mean + (value - mean) / count


def _summarize(summary: dict[str, Any], data: Usage) -> None:
    if data.gpus:
        utils = [g.util for g in data.gpus if g.util is not None]
        if utils:
            count = summary.get("gpu_samples", 0) + 1
            summary["gpu_util_mean"] = _running_mean(
                summary.get("gpu_util_mean"), sum(utils) / len(utils), count
            )
            summary["gpu_samples"] = count
        reported = [g for g in data.gpus if g.mem_used is not None]
        if reported:
            fullest = max(reported, key=lambda g: g.mem_used or 0)
            if (fullest.mem_used or 0) > summary.get("gpu_mem_peak", -1):
                summary["gpu_mem_peak"], summary["gpu_mem_total"] = fullest.mem_used, fullest.mem_total
    if data.cpu:
        count = summary.get("cpu_samples", 0) + 1
        summary["cpu_percent_mean"] = _running_mean(summary.get("cpu_percent_mean"), data.cpu.percent, count)
        summary["cpu_samples"] = count
        summary["rss_peak"] = max(summary.get("rss_peak", 0), data.cpu.rss)


def _judge_idle(
    session: Session,
    job: Job,
    number: int,
    summary: dict[str, Any],
    gpus: list[GpuUsage],
    ts: float,
    rule: IdleRule,
    broker: redis.Redis | None,
) -> None:
    utils = [g.util for g in gpus]
    # A GPU that reports no utilisation (a MIG slice) says nothing either way.
    if job.status != JobStatus.RUNNING or any(u is None for u in utils):
        return
    if max(u or 0.0 for u in utils) >= rule.threshold * 100:
        summary.pop("idle_since", None)
        summary["gpu_idle"] = False
        return
    if summary.get("idle_attempt") != number:  # a new attempt's idle spell starts afresh
        summary.pop("idle_since", None)
        summary["gpu_idle"] = False
        summary["idle_attempt"] = number
    since = summary.setdefault("idle_since", ts)
    if ts - since < rule.after:
        return
    if not summary.get("gpu_idle"):
        summary["gpu_idle"] = True
        which = ",".join(str(g.index) for g in gpus)
        started = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        message = (
            f"GPU {which} idle: under {rule.threshold:.0%} utilisation for {ts - since:.0f} s "
            f"(since {started}; gpu_idle_threshold, gpu_idle_after)"
        )
        add_warning(job, message)
        log.warning("job %s: %s", job.id, message)
    if rule.stop and not job.cancel_requested:
        _stop_idle(session, job, summary, rule, broker)


def _stop_idle(
    session: Session, job: Job, summary: dict[str, Any], rule: IdleRule, broker: redis.Redis | None
) -> None:
    if broker is None:
        log.warning("job %s: gpu_idle_stop is set but this event consumer has no Redis to cancel it", job.id)
        return
    reason = (
        f"cancelled by the farm: its GPUs stayed under {rule.threshold:.0%} utilisation "
        f"for {rule.after:.0f} s (gpu_idle_stop)"
    )
    try:
        # Raises before touching the job when Redis is away: the next sample tries again.
        stop_job(session, broker, job, JobStatus.CANCELLED)
    except redis.RedisError as exc:
        log.warning("job %s: could not cancel an idle job (%s); trying again at its next sample", job.id, exc)
        return
    summary["idle_stopped"] = reason
    audit.record(session, None, "job.cancel", f"job {job.id}", {"reason": "gpu idle"})


def idle_stop_reason(job: Job) -> str | None:
    """Why the idle rule cancelled the job, for its error once the attempt ended; None if it did not."""
    reason = (job.progress.get(SUMMARY_KEY) or {}).get("idle_stopped")
    return reason if isinstance(reason, str) else None


def count_idle_gpu_jobs(session: Session) -> int:
    """Running jobs flagged as holding idle GPUs now (for a gauge): running jobs are few, and the
    flag is inside their progress JSON, which neither database indexes the same way."""
    rows = session.exec(select(Job.progress).where(col(Job.status) == JobStatus.RUNNING))
    return sum(1 for progress in rows if (progress or {}).get(SUMMARY_KEY, {}).get("gpu_idle") is True)
