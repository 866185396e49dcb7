"""Publishing attempts to Celery queues by task name, so the master never imports the worker."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import redis
from celery import Celery
from sqlalchemy import ColumnElement
from sqlmodel import Session, and_, col, or_, select

from master.models import Dataset, Job, JobAttempt, utcnow
from master.published_marks import PublishedMarks
from master.resend_checks import ResendChecks
from shared.celery_config import RUN_ATTEMPT_TASK, celery_config, celery_priority, uses_rabbitmq
from shared.schemas import DatasetRef, JobSpec, TaskMessage
from shared.settings import Settings
from shared.signing import Signer
from shared.status import JobStatus

#: An attempt admitted but not marked enqueued this long after is assumed to have missed its fast
#: path (the master died between admitting and publishing) and is sent by the sweep.
SWEEP_GRACE = timedelta(seconds=5)


def make_publisher(settings: Settings) -> Celery:
    app = Celery("trainfarm-master")
    app.conf.update(celery_config(settings))
    return app


@dataclass(frozen=True)
class Publication:
    """One attempt's message, ready to send."""

    #: None for an attempt not flushed yet (only `send` takes those).
    attempt_id: int | None
    message: TaskMessage


class Dispatcher:
    def __init__(
        self,
        celery: Celery,
        marks: PublishedMarks,
        signer: Signer,
        message_max_age: float,
        client: redis.Redis,
        offline_after: float,
    ) -> None:
        self._celery = celery
        #: Leases, workers' beats and the live copies' marks, in the farm's Redis whichever broker
        #: carries the tasks.
        self._checks = ResendChecks(client, offline_after, int(message_max_age))
        #: The two brokers count priorities in opposite directions.
        self._rabbitmq = uses_rabbitmq(str(celery.conf.broker_url))
        self.marks = marks
        #: Every message is signed: workers run nothing else (shared/signing.py).
        self._signer = signer
        #: An attempt still queued this long after its message went out is sent again, freshly
        #: signed, before workers would refuse the first copy as expired (one bouncing between busy
        #: nodes for weeks, say); the lease lets only one copy run.
        self.republish_after = timedelta(seconds=message_max_age / 2)

    def prepare(self, session: Session, pairs: Sequence[tuple[Job, JobAttempt]]) -> list[Publication]:
        """The messages of attempts, built from rows at hand: once a commit has expired them, reading
        each back costs a query, which a sweep of a thousand jobs feels."""
        specs = [JobSpec.model_validate(job.spec) for job, _ in pairs]
        names = {name for spec in specs for name in spec.datasets}
        refs: dict[str, DatasetRef] = {}
        if names:  # most jobs name none: spare them the query
            found = session.exec(select(Dataset).where(col(Dataset.name).in_(names)))
            refs = {d.name: DatasetRef(name=d.name, key=d.key, etag=d.etag) for d in found}
        out = []
        for (job, attempt), spec in zip(pairs, specs, strict=True):
            assert job.id is not None
            datasets = [refs[name] for name in spec.datasets if name in refs]
            message = TaskMessage(job_id=job.id, attempt=attempt.number, spec=spec, datasets=datasets)
            out.append(Publication(attempt.id, message))
        return out

    def publish(self, publications: Sequence[Publication]) -> None:
        """Send the messages; their attempts are marked enqueued a moment later, in one statement."""
        for publication in publications:
            self._send_task(publication.message)
        self.marks.add(p.attempt_id for p in publications if p.attempt_id is not None)

    def resend(self, session: Session, job: Job, attempt: JobAttempt, not_before: float = 0.0) -> float:
        """Publish one attempt (again), issued no earlier than `not_before`, record that it was
        published, and say when the copy was issued; the caller marks it the live copy once the
        row is committed."""
        [publication] = self.prepare(session, [(job, attempt)])
        issued_at = self._send_task(publication.message, not_before)
        attempt.enqueued_at = utcnow()
        session.add(attempt)
        return issued_at

    def _send_task(self, message: TaskMessage, not_before: float = 0.0) -> float:
        task_id = f"job-{message.job_id}-attempt-{message.attempt}"
        # Stamped as it is sent: a message built at submission may be admitted days later.
        issued_at = max(time.time(), not_before)
        signed = self._signer.sign(message.model_copy(update={"issued_at": issued_at}))
        self._celery.send_task(
            RUN_ATTEMPT_TASK,
            kwargs={"message": signed.model_dump()},
            queue=message.spec.queue,
            priority=celery_priority(message.spec.priority, self._rabbitmq),
            task_id=task_id,
            # What Flower shows for the arguments; Celery's own repr of the spec costs a third of a publish.
            kwargsrepr=task_id,
        )
        return issued_at

    def sweep(self, session: Session) -> int:
        """Send admitted attempts whose message was never marked sent (the master stopped between
        admitting and publishing, or Redis refused), again those whose message is about to expire
        unstarted, and again those whose message a worker that died since may have taken
        (master/dead_workers.py); not those a worker leases. Attempts not admitted are
        admission's (master/fairshare/). Oldest first: a re-send goes to the back of its queue."""
        now = utcnow()
        maybe_lost: list[ColumnElement[bool]] = [
            and_(Job.queue == queue, col(JobAttempt.enqueued_at) < bound)  # type: ignore[arg-type]
            for queue, bound in self._checks.dead_worker_bounds().items()
        ]
        rows = session.exec(
            select(JobAttempt, Job)
            .join(Job, Job.id == JobAttempt.job_id)  # type: ignore[arg-type]
            .where(
                JobAttempt.status == JobStatus.QUEUED,
                col(JobAttempt.admitted_at) < now - SWEEP_GRACE,
                or_(
                    JobAttempt.enqueued_at.is_(None),  # type: ignore[union-attr]
                    col(JobAttempt.enqueued_at) < now - self.republish_after,
                    *maybe_lost,
                ),
                Job.status == JobStatus.QUEUED,
                JobAttempt.number == Job.attempts,
            )
            .order_by(col(JobAttempt.id))
            .limit(500)
        ).all()
        keys = [(attempt.job_id, attempt.number) for attempt, _ in rows]
        leased = self._checks.leased(keys)
        not_before = self._checks.not_before(keys)
        issued = [
            (key, self.resend(session, job, attempt, not_before.get(key, 0.0)))
            for (attempt, job), key in zip(rows, keys, strict=True)
            if key not in leased
        ]
        session.commit()
        self._checks.mark_live(issued)
        return len(issued)
