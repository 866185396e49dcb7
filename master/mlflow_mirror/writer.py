"""Brings one job's MLflow run up to date: creates it, sends the metrics it lacks, closes it.

Each step commits what it achieved (the run's id, the last metric sent) before the next one, so a
failure part-way repeats nothing that MLflow already has. A refusal (MlflowRefused) of params or of
a metric batch is noted in `last_error` and skipped; one of the run itself gives the job up.
"""

from __future__ import annotations

import logging

from sqlmodel import Session, col, select

from master.mlflow_mirror import runs
from master.mlflow_mirror.rest import BATCH_METRICS, MlflowClient, MlflowRefused
from master.models import Artifact, Job, JobMetric, MlflowRun, utcnow

log = logging.getLogger(__name__)

#: Metric batches one job may send in one round; the rest wait for the next, so that a job with a
#: long history does not hold up the others.
BATCHES_PER_ROUND = 5
#: Metric rows read per query (each holds up to shared.events.MAX_METRICS values).
ROWS_PER_QUERY = 500


class RunWriter:
    """Writes jobs' runs to the server behind `client`, into experiments named `prefix` + project."""

    def __init__(self, client: MlflowClient, api_url: str, prefix: str) -> None:
        self._client = client
        self._api_url = api_url
        self._prefix = prefix
        #: Experiment ids by name: an experiment, once there, keeps its id.
        self._experiments: dict[str, str] = {}

    def experiment(self, project: str) -> str:
        name = f"{self._prefix}{project}"
        if name not in self._experiments:
            self._experiments[name] = self._client.experiment_id(name)
        return self._experiments[name]

    def update(self, session: Session, job: Job, run: MlflowRun) -> bool:
        """Bring `run` up to date with `job`; True when the run needs more (metrics left over),
        False when it is as far as the job. Raises MlflowUnavailable to be tried again later."""
        if run.run_id is None:
            try:
                self._open(session, job, run)
            except MlflowRefused as exc:  # no run, so nothing else of this job can go anywhere
                self._give_up(session, job, run, exc)
                return False
        if self._send_metrics(session, job, run):
            return True
        if job.status.terminal:
            self._close(session, job, run)
        return False

    def _open(self, session: Session, job: Job, run: MlflowRun) -> None:
        assert job.id is not None
        experiment = self.experiment(job.project)
        tags = runs.run_tags(job, self._api_url)
        run_id = None
        if run.attempts:  # an earlier create may have worked with its answer lost
            run_id = self._client.find_run(experiment, "trainfarm.url", tags["trainfarm.url"])
        if run_id is None:
            start = runs.millis(job.started_at or job.finished_at or job.created_at)
            run_id = self._client.create_run(experiment, runs.run_name(job), start, job.owner, tags)
        # Params before the id is kept: logging the same values again (after a failure) is allowed.
        try:
            self._client.log_batch(run_id, params=runs.run_params(job.spec))
        except MlflowRefused as exc:
            self._note(job, run, "params skipped", exc)
        run.run_id = run_id
        session.add(run)
        session.commit()

    def _send_metrics(self, session: Session, job: Job, run: MlflowRun) -> bool:
        """Up to BATCHES_PER_ROUND batches of the job's new metric rows; True if rows are left."""
        assert run.run_id is not None
        for _ in range(BATCHES_PER_ROUND):
            rows = list(
                session.exec(
                    select(JobMetric)
                    .where(JobMetric.job_id == job.id, col(JobMetric.id) > run.last_metric_id)
                    .order_by(col(JobMetric.id))
                    .limit(ROWS_PER_QUERY)
                )
            )
            if not rows:
                return False
            batch: list[JobMetric] = []
            points = 0
            for row in rows:  # whole rows only: a row is never split over two calls
                count = len(row.values)
                if batch and points + count > BATCH_METRICS:
                    break
                batch.append(row)
                points += count
            try:
                self._client.log_batch(run.run_id, metrics=runs.metric_points(batch))
            except MlflowRefused as exc:
                self._note(job, run, f"metric rows {batch[0].id}-{batch[-1].id} skipped", exc)
            assert batch[-1].id is not None
            run.last_metric_id = batch[-1].id
            session.add(run)
            session.commit()
        return True

    def _close(self, session: Session, job: Job, run: MlflowRun) -> None:
        assert run.run_id is not None
        artifacts = list(session.exec(select(Artifact).where(Artifact.job_id == job.id)))
        try:
            self._client.log_batch(run.run_id, tags=runs.closing_tags(job, artifacts, self._api_url))
            end = runs.millis(job.finished_at or utcnow())
            self._client.end_run(run.run_id, runs.FINAL_STATUS[job.status], end)
        except MlflowRefused as exc:
            self._note(job, run, "closing the run failed", exc)
        run.finished = True
        session.add(run)
        session.commit()

    def _give_up(self, session: Session, job: Job, run: MlflowRun, exc: MlflowRefused) -> None:
        self._note(job, run, "not mirrored", exc)
        run.finished = True
        session.add(run)
        session.commit()

    def _note(self, job: Job, run: MlflowRun, what: str, exc: MlflowRefused) -> None:
        log.warning("MLflow mirror of job %s: %s: %s", job.id, what, exc.message)
        run.last_error = f"{what}: {exc.message}"
