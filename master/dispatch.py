"""Publishing attempts to Celery queues by task name, so the master never imports the worker."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from sqlmodel import Session, select

from master.models import Dataset, Job, JobAttempt, utcnow
from shared.celery_config import RUN_ATTEMPT_TASK, celery_config, celery_priority
from shared.schemas import DatasetRef, JobSpec, TaskMessage
from shared.settings import Settings
from shared.status import JobStatus

#: An attempt not marked enqueued this long after creation is assumed to have missed its fast path
#: (master died between commit and publish) and is sent by the sweep.
SWEEP_GRACE = timedelta(seconds=5)


def make_publisher(settings: Settings) -> Celery:
    app = Celery("trainfarm-master")
    app.conf.update(celery_config(settings))
    return app


class Dispatcher:
    def __init__(self, celery: Celery) -> None:
        self._celery = celery

    def send(self, session: Session, job: Job, attempt: JobAttempt) -> None:
        """Publish one attempt and record that it was published."""
        spec = JobSpec.model_validate(job.spec)
        refs = [
            DatasetRef(name=d.name, key=d.key, etag=d.etag)
            for d in session.exec(select(Dataset).where(Dataset.name.in_(spec.datasets)))  # type: ignore[attr-defined]
        ]
        assert job.id is not None
        message = TaskMessage(job_id=job.id, attempt=attempt.number, spec=spec, datasets=refs)
        self._celery.send_task(
            RUN_ATTEMPT_TASK,
            kwargs={"message": message.model_dump(mode="json")},
            queue=spec.queue,
            priority=celery_priority(spec.priority),
            task_id=f"job-{job.id}-attempt-{attempt.number}",
        )
        attempt.enqueued_at = utcnow()
        session.add(attempt)

    def sweep(self, session: Session) -> int:
        """Send queued attempts that were never published or whose retry backoff has passed."""
        now = utcnow()
        rows = session.exec(
            select(JobAttempt, Job)
            .join(Job, Job.id == JobAttempt.job_id)  # type: ignore[arg-type]
            .where(
                JobAttempt.status == JobStatus.QUEUED,
                JobAttempt.enqueued_at.is_(None),  # type: ignore[union-attr]
                Job.status == JobStatus.QUEUED,
                JobAttempt.number == Job.attempts,
            )
            .limit(500)
        ).all()
        sent = 0
        for attempt, job in rows:
            due = attempt.not_before or attempt.created_at + SWEEP_GRACE
            if due > now:
                continue
            self.send(session, job, attempt)
            sent += 1
        session.commit()
        return sent
