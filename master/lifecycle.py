"""What happens to a job on submission, cancellation and at the end of each attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

import redis
from sqlmodel import Session, select

from master import audit
from master.job_warnings import add_warning
from master.metrics import HANDBACKS
from master.models import Dataset, Job, JobAttempt, JobTag, utcnow
from master.transitions import move_attempt, move_job
from shared.errors import Conflict, InvalidRequest
from shared.schemas import AttemptOutcome, JobSpec
from shared.status import JobStatus
from shared.storage import ArtifactStore, code_bundle_key
from shared.streams import cancel_key

#: Cancel flags outlive any queue wait; a week is far beyond it.
CANCEL_FLAG_TTL = 7 * 86400
RETRY_BASE_DELAY = 2.0
RETRY_MAX_DELAY = 300.0


def check_datasets(session: Session, spec: JobSpec) -> None:
    known = set(session.exec(select(Dataset.name).where(Dataset.name.in_(spec.datasets))))  # type: ignore[attr-defined]
    for i, name in enumerate(spec.datasets):
        if name not in known:
            raise InvalidRequest(
                f"dataset '{name}' not found; upload it first (trainfarm datasets upload)",
                field=f"datasets[{i}]",
            )


def check_code(store: ArtifactStore, specs: list[JobSpec], *, batch: bool = False) -> None:
    """Every code bundle named is in S3; one stat per distinct digest, however many jobs share it."""
    present: dict[str, bool] = {}
    for i, spec in enumerate(specs):
        if spec.code is None:
            continue
        if spec.code not in present:
            present[spec.code] = store.exists(code_bundle_key(spec.code))
        if not present[spec.code]:
            raise InvalidRequest(
                f"code bundle {spec.code} not found; upload it first (PUT /api/code/<digest>, "
                "or let `trainfarm submit DIR` pack and upload it)",
                field=f"jobs[{i}].code" if batch else "code",
            )


@dataclass(frozen=True)
class Origin:
    """Where a job came from, when not straight from a person: a re-run, or a sweep's trial."""

    rerun_of: int | None = None
    sweep_id: int | None = None
    trial: int | None = None


NO_ORIGIN = Origin()


def submit_jobs(
    session: Session,
    specs: list[JobSpec],
    owner: str | None,
    address: str | None = None,
    origins: list[Origin] | None = None,
    *,
    commit: bool = True,
) -> list[tuple[Job, JobAttempt]]:
    """Store the jobs with their first attempts, waiting for admission (master/fairshare/), which
    publishes each when it may start; the caller tells the admitter. With `commit=False` the
    caller commits (a sweep stores its trial's row in the same transaction)."""
    for spec in specs:
        if spec.datasets:
            check_datasets(session, spec)
    origins = origins or [NO_ORIGIN] * len(specs)
    jobs = [
        Job(
            name=s.name,
            queue=s.queue,
            priority=s.priority,
            devices=s.devices,
            preemptible=s.may_be_preempted,
            spec=s.model_dump(mode="json"),
            owner=owner,
            project=s.project,
            tags=list(s.tags),
            rerun_of=origin.rerun_of,
            sweep_id=origin.sweep_id,
            trial=origin.trial,
        )
        for s, origin in zip(specs, origins, strict=True)
    ]
    session.add_all(jobs)
    session.flush()
    session.add_all(JobTag(tag=tag, job_id=job.id) for job in jobs for tag in job.tags)  # type: ignore[arg-type]
    ids = [j.id for j in jobs]
    # One entry per request: a 1,000-job sweep is one thing a person did.
    target = f"job {ids[0]}" if len(ids) == 1 else f"jobs {ids[0]}..{ids[-1]} ({len(ids)})"
    audit.record(session, owner, "job.submit", target, {"jobs": ids} if len(ids) > 1 else {}, address)
    attempts = [JobAttempt(job_id=j.id, number=1) for j in jobs]  # type: ignore[arg-type]
    session.add_all(attempts)
    # The jobs are answered as stored: keeping their loaded values spares a re-read per job.
    session.expire_on_commit = False
    if commit:
        session.commit()
    else:
        session.flush()
    return list(zip(jobs, attempts, strict=True))


def cancel_job(
    session: Session, broker: redis.Redis, job: Job, actor: str | None, address: str | None = None
) -> Job:
    if job.status.terminal:
        raise Conflict(f"job {job.id} has already ended ({job.status.value})")
    audit.record(session, actor, "job.cancel", f"job {job.id}", {"status": job.status.value}, address)
    stop_job(session, broker, job, JobStatus.CANCELLED)
    session.commit()
    session.refresh(job)
    return job


def prune_job(session: Session, broker: redis.Redis, job: Job, reason: str) -> None:
    """Stop a sweep's trial early (in the caller's transaction): a queued one is pruned now, a running
    one once its attempt ends (the worker stops it as it stops a cancelled one)."""
    if job.status.terminal:
        return
    job.pruning = True
    job.error = reason
    stop_job(session, broker, job, JobStatus.PRUNED)


def stop_job(session: Session, broker: redis.Redis, job: Job, ending: JobStatus) -> None:
    """Raise the job's cancel flag; a job still queued ends at once as `ending`."""
    # The flag is what workers check, both before starting and while running.
    broker.set(cancel_key(job.id), "1", ex=CANCEL_FLAG_TTL)  # type: ignore[arg-type]
    job.cancel_requested = True
    if job.status == JobStatus.QUEUED:
        # Nothing runs yet: the job ends now, and a worker that receives it drops it.
        now = utcnow()
        move_job(job, ending, at=now)
        attempt = current_attempt(session, job)
        if attempt is not None and attempt.status == JobStatus.QUEUED:
            move_attempt(attempt, JobStatus.CANCELLED, at=now)
            session.add(attempt)
    session.add(job)


def current_attempt(session: Session, job: Job) -> JobAttempt | None:
    return session.exec(
        select(JobAttempt).where(JobAttempt.job_id == job.id, JobAttempt.number == job.attempts)
    ).first()


@dataclass(frozen=True)
class RetryPolicy:
    """How attempts that end are retried; the master builds it from its settings."""

    #: Hand-backs a job gets free of its retries (settings.max_handbacks).
    max_handbacks: int = 10
    base_delay: float = RETRY_BASE_DELAY
    max_delay: float = RETRY_MAX_DELAY


DEFAULT_POLICY = RetryPolicy()


def retry_delay(failures: int, policy: RetryPolicy, jitter: float = 1.0) -> float:
    """Seconds before the retry that follows `failures` failed attempts: doubling from the base,
    capped; `jitter` (0.5 to 1 in use) spreads the retries of many jobs hit by the same outage."""
    if failures <= 0:
        return 0.0
    # The exponent is capped too, so a huge count cannot overflow the float.
    return min(policy.max_delay, policy.base_delay * 2.0 ** min(failures - 1, 64)) * jitter


def requeue_preempted(session: Session, job: Job, attempt: JobAttempt, error: str | None) -> None:
    """The job goes back to waiting for admission, as it was: no retry used, no backoff, no hand-back
    counted; its next attempt resumes from the checkpoint this one uploaded."""
    if job.status != JobStatus.QUEUED and not move_job(job, JobStatus.QUEUED):
        return
    nxt = JobAttempt(job_id=job.id, number=attempt.number + 1)  # type: ignore[arg-type]
    session.add(nxt)
    job.attempts = nxt.number
    job.error = f"attempt {attempt.number}: {error or 'preempted'}; queued again"


def end_attempt(
    session: Session,
    job: Job,
    attempt: JobAttempt,
    outcome: AttemptOutcome,
    *,
    retryable: bool,
    error: str | None,
    handed_back: bool = False,
    preempted: bool = False,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> None:
    """Move the job after its current attempt ended: done, or a new attempt (after a backoff).

    A hand-back is free (no retry used, no backoff) up to `policy.max_handbacks` per job; past that
    it counts as a failed retryable attempt, so a worker handing back again and again ends the job.
    An attempt the master preempted (`preempted`) is always free: the farm stopped it, not the job.
    """
    if preempted and outcome == AttemptOutcome.FAILED and not job.cancel_requested:
        requeue_preempted(session, job, attempt, error)
        return
    spec = JobSpec.model_validate(job.spec)
    free_handback = handed_back and job.handbacks < policy.max_handbacks
    if handed_back:
        HANDBACKS.inc()
        if not free_handback:
            add_warning(
                job,
                f"attempt {attempt.number} was handed back after {job.handbacks} free hand-backs "
                f"(the limit, max_handbacks): counted as a failed attempt",
            )
            error = f"{error} (beyond the limit of {policy.max_handbacks} hand-backs per job)"
    failures = attempt.number - job.handbacks - (1 if free_handback else 0)
    retry = outcome == AttemptOutcome.FAILED and retryable and not job.cancel_requested
    if retry and (free_handback or failures <= spec.max_retries):
        if job.status != JobStatus.QUEUED and not move_job(job, JobStatus.QUEUED):
            return  # the job ended by another path meanwhile: no new attempt
        delay = 0.0 if free_handback else retry_delay(failures, policy, random.uniform(0.5, 1.0))
        nxt = JobAttempt(
            job_id=job.id,  # type: ignore[arg-type]
            number=attempt.number + 1,
            not_before=utcnow() + timedelta(seconds=delay),
        )
        session.add(nxt)
        job.attempts = nxt.number
        job.handbacks += 1 if free_handback else 0
        job.error = f"attempt {attempt.number}: {error}; retrying"
        return
    if job.pruning and outcome != AttemptOutcome.SUCCEEDED:
        # Its sweep stopped it: `pruned`, whatever the stopped process said; the reason stays.
        move_job(job, JobStatus.PRUNED)
        return
    if retry:
        error = f"{error} (no retries left after {failures} failed attempts)"
    if move_job(job, JobStatus(outcome.value)):
        job.error = error
