"""A sweep's trials as jobs: the job a trial runs, what its job reported so far, and the trial's
state once its job ends."""

from __future__ import annotations

import math
from typing import Any

from sqlmodel import Session, col, select

from master.job_warnings import add_warning
from master.models import Job, JobMetric, Sweep, SweepTrial, utcnow
from shared.schemas import JobSpec
from shared.status import JobStatus
from shared.sweeps import SweepSpec


def trial_spec(sweep: Sweep, spec: SweepSpec, number: int, params: dict[str, Any]) -> JobSpec:
    """The base job with the trial's hyperparameters set, named and tagged after its sweep."""
    base = spec.base
    return base.model_copy(
        update={
            "name": f"{sweep.name}-{number}",
            "hyperparameters": {**base.hyperparameters, **params},
            "tags": list(dict.fromkeys([*base.tags, f"sweep:{sweep.id}"])),
        }
    )


def read_new_values(session: Session, trial: SweepTrial, metric: str) -> bool:
    """Add the objective's values reported since the last read to `trial.intermediate` (by epoch,
    else by step); whether any arrived."""
    rows = session.exec(
        select(JobMetric)
        .where(JobMetric.job_id == trial.job_id, col(JobMetric.id) > trial.last_metric_id)
        .order_by(col(JobMetric.id))
    ).all()
    if not rows:
        return False
    intermediate = dict(trial.intermediate)
    for row in rows:
        value = row.values.get(metric)
        at = row.epoch if row.epoch is not None else row.step
        if isinstance(value, int | float) and math.isfinite(value) and at is not None:
            intermediate[str(at)] = float(value)
    arrived = intermediate != trial.intermediate
    # A new dict, not a change inside it: the JSON column sees assignments only.
    trial.intermediate = intermediate
    trial.last_metric_id = rows[-1].id or trial.last_metric_id
    return arrived


def settle(trial: SweepTrial, job: Job, metric: str) -> None:
    """The trial's state from its ended job: `complete` with the job's final metric as its value
    (even if the sweep asked to prune it, when the job finished first), else `pruned` or `failed`."""
    trial.finished_at = job.finished_at or utcnow()
    if job.status == JobStatus.SUCCEEDED:
        value = job.metrics.get(metric)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            trial.state, trial.value = "complete", float(value)
            return
        trial.state = "failed"
        add_warning(
            job,
            f"sweep {trial.sweep_id}: the job succeeded without reporting '{metric}' "
            f"(got {value!r}); trial {trial.number} counts as failed",
        )
        return
    trial.state = "pruned" if job.status == JobStatus.PRUNED else "failed"


def trial_jobs(session: Session, trials: list[SweepTrial]) -> dict[int, Job]:
    ids = [t.job_id for t in trials if t.job_id is not None]
    if not ids:
        return {}
    return {job.id: job for job in session.exec(select(Job).where(col(Job.id).in_(ids)))}  # type: ignore[misc]


def unended_jobs(session: Session, sweep_id: int) -> list[Job]:
    """The sweep's trial jobs that have not ended (to cancel them with the sweep)."""
    jobs = session.exec(select(Job).where(Job.sweep_id == sweep_id).order_by(col(Job.id))).all()
    return [job for job in jobs if not job.status.terminal]
