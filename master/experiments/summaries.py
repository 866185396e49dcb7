"""Series summaries: each ended job's metric series, downsampled once to `SUMMARY_POINTS` and
stored (`MetricSeries`), so comparing runs reads a few lists per job instead of every report.

A background loop takes the ended jobs whose `summarized` flag is unset, oldest first. Summaries are
stamped with the highest metric row id read before the rows: a report stored in between leaves them
stale (the comparison then reads the rows), never silently missing a point.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine, delete, update
from sqlmodel import Session, col, select

from master.experiments.compare import XAxis, build_series, lttb
from master.experiments.compare_reader import SUMMARY_POINTS, metric_stamps, read_rows
from master.metrics import LOOP_ERRORS
from master.models import Job, MetricSeries
from shared.status import TERMINAL

log = logging.getLogger(__name__)

AXES: tuple[XAxis, ...] = ("step", "epoch")
#: Jobs summarized per round: a backlog (after an upgrade, say) drains over a few rounds.
BATCH = 20
#: Seconds a job whose summary failed waits before it is tried again.
RETRY_AFTER = 300.0


def summarize(session: Session, job_id: int) -> int:
    """Compute and store the job's summaries for both axes and every metric, replacing any it had,
    and mark the job summarized; the number of series stored. Commits."""
    upto = metric_stamps(session, [job_id]).get(job_id, 0)
    summaries = []
    for axis in AXES:
        for name, series in build_series(*read_rows(session, [job_id], axis)).get(job_id, {}).items():
            x, y = lttb(series.x, series.y, SUMMARY_POINTS)
            summaries.append(
                MetricSeries(
                    job_id=job_id, axis=axis, metric=name, upto_id=upto, stored=series.stored, x=x, y=y
                )
            )
    # Written after the reading, in one short transaction; the job's row is updated first, so two
    # masters summarizing the same job take turns instead of both inserting the same keys.
    session.execute(update(Job).where(col(Job.id) == job_id).values(summarized=True))
    session.execute(delete(MetricSeries).where(col(MetricSeries.job_id) == job_id))
    session.add_all(summaries)
    session.commit()
    return len(summaries)


class SeriesSummarizer:
    """Summarizes ended jobs in the background; a job whose summary fails is logged and set aside
    for `retry_after` seconds, so one bad job neither stops the others nor fails every round."""

    def __init__(self, engine: Engine, batch: int = BATCH, retry_after: float = RETRY_AFTER) -> None:
        self._engine = engine
        self._batch = batch
        self._retry_after = retry_after
        #: Job id -> when (time.monotonic()) it may be tried again.
        self._set_aside: dict[int, float] = {}

    def round(self) -> int:
        """Summarize up to `batch` ended jobs not summarized yet, oldest first; how many were."""
        now = time.monotonic()
        self._set_aside = {job_id: at for job_id, at in self._set_aside.items() if at > now}
        query = (
            select(Job.id)
            .where(col(Job.summarized).is_(False), col(Job.status).in_([s.value for s in TERMINAL]))
            .order_by(col(Job.id))
            .limit(self._batch)
        )
        if self._set_aside:
            query = query.where(col(Job.id).not_in(list(self._set_aside)))
        with Session(self._engine) as session:
            job_ids = [job_id for job_id in session.exec(query) if job_id is not None]
        done = 0
        for job_id in job_ids:
            with Session(self._engine) as session:
                try:
                    summarize(session, job_id)
                except Exception:
                    session.rollback()
                    log.exception(
                        "summarizing job %d's metric series failed; again in %.0fs", job_id, self._retry_after
                    )
                    LOOP_ERRORS.labels("series").inc()
                    self._set_aside[job_id] = time.monotonic() + self._retry_after
                    continue
            done += 1
        return done
