"""The MLflow mirror: creates, feeds and closes one MLflow run per job.

Which jobs: each round claims (an `mlflow_runs` row) every job newer than the newest one claimed
so far, looking back CLAIM_WINDOW ids for ones whose insert committed late. Switched on for a farm
with history, it starts from the newest CLAIM_WINDOW jobs rather than flood MLflow with years of
runs. A claimed job is worked on once it has started (or ended, cancelled while waiting).

Per round, at most JOBS_PER_ROUND due runs, least recently served first, so that every running
job's metrics keep flowing however many there are. A run that MLflow could not take (down, 5xx,
timed out) waits `retry_delay(attempts)`, and the round ends there: the server that failed one job
would most likely fail the next. While MLflow does not answer at all, a round only pings it; once it
answers, every run waiting on a failure is due at once, so an outage's backlog is caught up in the
next rounds rather than over each job's longest wait. Nothing else in the master waits for any of this.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import Engine, func, or_, update
from sqlmodel import Session, col, select

from master.mlflow_mirror.rest import MlflowClient, MlflowUnavailable
from master.mlflow_mirror.writer import RunWriter
from master.models import Job, MlflowRun, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

#: Runs worked on per round (the loop calls `round` every second).
JOBS_PER_ROUND = 50
#: How far below the newest claimed job id a round looks for unclaimed jobs, and how many jobs of
#: a farm's history a newly switched-on mirror takes.
CLAIM_WINDOW = 500
#: Seconds between two looks at a running job's new metrics.
FOLLOW_INTERVAL = 2.0
#: Retry waits after failures: RETRY_BASE seconds, doubling, at most RETRY_CAP.
RETRY_BASE = 2.0
RETRY_CAP = 600.0


def retry_delay(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failure in a row (1, 2, ...)."""
    return min(RETRY_CAP, RETRY_BASE * 2.0 ** min(max(attempts, 1) - 1, 30))


class MlflowMirror:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        assert settings.mlflow_tracking_uri, "the mirror runs only with a tracking URI"
        self._engine = engine
        self._client = MlflowClient(settings.mlflow_tracking_uri)
        self._writer = RunWriter(self._client, settings.api_url, settings.mlflow_experiment_prefix)
        #: The last try got no answer: ping before anything else.
        self._unreachable = False

    def round(self) -> None:
        """One pass (the background loop calls it every second while a tracking URI is set)."""
        with Session(self._engine) as session:
            if self._unreachable:
                try:
                    self._client.ping()
                except MlflowUnavailable:
                    return
                self._unreachable = False
                self.retry_now(session)
            self.claim(session)
            for run, job in self.due(session):
                if not self._serve(session, job, run):
                    break

    def claim(self, session: Session) -> int:
        """Make the mirror rows of jobs not claimed yet (see the module doc); how many."""
        newest = session.exec(select(func.max(MlflowRun.job_id))).one()
        if newest is None:
            newest = session.exec(select(func.max(Job.id))).one()
            if newest is None:
                return 0
        unclaimed = (
            select(Job.id)
            .outerjoin(MlflowRun, col(MlflowRun.job_id) == col(Job.id))
            .where(col(Job.id) > newest - CLAIM_WINDOW, col(MlflowRun.job_id).is_(None))
            .order_by(col(Job.id))
            .limit(CLAIM_WINDOW)
        )
        ids = list(session.exec(unclaimed))
        for job_id in ids:
            assert job_id is not None
            session.add(MlflowRun(job_id=job_id))
        session.commit()
        return len(ids)

    def retry_now(self, session: Session) -> None:
        """Make every run that waits on a failure due (MLflow answers again)."""
        waiting = col(MlflowRun.finished).is_(False) & (col(MlflowRun.attempts) > 0)
        session.execute(update(MlflowRun).where(waiting).values(next_at=utcnow()))
        session.commit()

    def due(self, session: Session) -> list[tuple[MlflowRun, Job]]:
        started = or_(col(Job.started_at).is_not(None), col(Job.finished_at).is_not(None))
        query = (
            select(MlflowRun, Job)
            .join(Job, col(Job.id) == col(MlflowRun.job_id))
            .where(col(MlflowRun.finished).is_(False), col(MlflowRun.next_at) <= utcnow(), started)
            .order_by(col(MlflowRun.next_at), col(MlflowRun.job_id))
            .limit(JOBS_PER_ROUND)
        )
        return [(run, job) for run, job in session.exec(query)]

    def _serve(self, session: Session, job: Job, run: MlflowRun) -> bool:
        """Update one run; False if MLflow failed it (the round should stop)."""
        try:
            more = self._writer.update(session, job, run)
        except MlflowUnavailable as exc:
            self._unreachable = exc.unreachable
            self._back_off(session, job, run, exc.message)
            return False
        except Exception as exc:  # a surprise in one job's data must not stall every other job
            log.exception("MLflow mirror of job %s failed", job.id)
            self._back_off(session, job, run, f"{type(exc).__name__}: {exc}")
            return True
        if not run.finished:
            run.attempts = 0
            run.next_at = utcnow() + timedelta(seconds=0 if more else FOLLOW_INTERVAL)
            session.add(run)
            session.commit()
        return True

    def _back_off(self, session: Session, job: Job, run: MlflowRun, error: str) -> None:
        session.rollback()  # what the failed step had changed; earlier steps are committed
        run.attempts += 1
        delay = retry_delay(run.attempts)
        run.next_at = utcnow() + timedelta(seconds=delay)
        run.last_error = error
        session.add(run)
        session.commit()
        log.warning(
            "MLflow mirror of job %s failed (try %d), again in %.0fs: %s", job.id, run.attempts, delay, error
        )
