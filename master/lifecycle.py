"""What happens to a job on submission, cancellation and at the end of each attempt."""

from __future__ import annotations

import random
from datetime import timedelta

import redis
from sqlmodel import Session, select

from master.dispatch import Dispatcher
from master.models import Dataset, Job, JobAttempt, utcnow
from shared.errors import Conflict, InvalidRequest
from shared.schemas import AttemptOutcome, JobSpec
from shared.status import JobStatus, can_move
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


def submit_jobs(session: Session, dispatcher: Dispatcher, specs: list[JobSpec]) -> list[Job]:
    """Store then publish. A crash between the two leaves the attempt unpublished, and the
    dispatcher's sweep publishes it: a job is never stuck in `queued` with no message."""
    for spec in specs:
        if spec.datasets:
            check_datasets(session, spec)
    jobs = [
        Job(name=s.name, queue=s.queue, priority=s.priority, spec=s.model_dump(mode="json")) for s in specs
    ]
    session.add_all(jobs)
    session.flush()
    attempts = [JobAttempt(job_id=j.id, number=1) for j in jobs]  # type: ignore[arg-type]
    session.add_all(attempts)
    session.flush()
    # Built before the commit expires the rows: reading each back would cost a query per job.
    publications = dispatcher.prepare(session, list(zip(jobs, attempts, strict=True)))
    # The jobs are answered as stored: keeping their loaded values spares a re-read per job.
    session.expire_on_commit = False
    session.commit()
    dispatcher.publish(publications)
    return jobs


def cancel_job(session: Session, broker: redis.Redis, job: Job) -> Job:
    if job.status.terminal:
        raise Conflict(f"job {job.id} has already ended ({job.status.value})")
    # The flag is what workers check, both before starting and while running.
    broker.set(cancel_key(job.id), "1", ex=CANCEL_FLAG_TTL)  # type: ignore[arg-type]
    job.cancel_requested = True
    if job.status == JobStatus.QUEUED:
        # Nothing runs yet: the job is cancelled now, and a worker that receives it drops it.
        now = utcnow()
        job.status, job.finished_at = JobStatus.CANCELLED, now
        attempt = current_attempt(session, job)
        if attempt is not None and attempt.status == JobStatus.QUEUED:
            attempt.status, attempt.finished_at = JobStatus.CANCELLED, now
            session.add(attempt)
    session.add(job)
    session.commit()
    session.refresh(job)
    return job


def current_attempt(session: Session, job: Job) -> JobAttempt | None:
    return session.exec(
        select(JobAttempt).where(JobAttempt.job_id == job.id, JobAttempt.number == job.attempts)
    ).first()


def end_attempt(
    session: Session,
    job: Job,
    attempt: JobAttempt,
    outcome: AttemptOutcome,
    *,
    retryable: bool,
    error: str | None,
    handed_back: bool = False,
) -> None:
    """Move the job after its current attempt ended: done, or a new attempt (after a backoff)."""
    spec = JobSpec.model_validate(job.spec)
    failures = attempt.number - job.handbacks - (1 if handed_back else 0)
    retry = outcome == AttemptOutcome.FAILED and retryable and not job.cancel_requested
    if retry and (handed_back or failures <= spec.max_retries):
        delay = 0.0 if handed_back else min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (failures - 1))
        nxt = JobAttempt(
            job_id=job.id,  # type: ignore[arg-type]
            number=attempt.number + 1,
            # Jitter spreads the retries of many jobs hit by the same outage.
            not_before=utcnow() + timedelta(seconds=delay * random.uniform(0.5, 1.0)),
        )
        session.add(nxt)
        job.attempts = nxt.number
        job.handbacks += 1 if handed_back else 0
        job.status = JobStatus.QUEUED
        job.error = f"attempt {attempt.number}: {error}; retrying"
        return
    if retry:
        error = f"{error} (no retries left after {failures} failed attempts)"
    new = JobStatus(outcome.value)
    if can_move(job.status, new):
        job.status = new
        job.finished_at = utcnow()
        job.error = error
