"""The one door for a job's or an attempt's status: every write of `status` goes through here.

"Where can a job become failed?" is then answered in one file: the tables in shared/status.py say
which moves exist, and a move they do not allow (a late or replayed report) is refused, logged and
counted; it is never an exception, because the event consumer that makes most moves must not stop.
"""

from __future__ import annotations

import logging
from datetime import datetime

from master.metrics import STATUS_MOVES_REFUSED, observe_started
from master.models import Job, JobAttempt, utcnow
from shared.status import JobStatus, can_move, can_move_attempt

log = logging.getLogger(__name__)


def move_job(job: Job, new: JobStatus, *, at: datetime | None = None) -> bool:
    """Move `job` to `new`; False, with nothing changed, when shared/status.py does not allow it.

    Ending the job stamps `finished_at`; starting it stamps `started_at` the first time only.
    """
    if not can_move(job.status, new):
        log.info("job %s: %s -> %s refused", job.id, job.status.value, new.value)
        STATUS_MOVES_REFUSED.labels("job").inc()
        return False
    job.status = new
    if new == JobStatus.RUNNING:
        job.started_at = job.started_at or at or utcnow()
    if new.terminal:
        job.finished_at = at or utcnow()
    return True


def move_attempt(attempt: JobAttempt, new: JobStatus, *, at: datetime | None = None) -> bool:
    """Move `attempt` to `new`; False, with nothing changed, when shared/status.py does not allow it.

    Ending the attempt stamps `finished_at`; starting it stamps `started_at`.
    """
    if not can_move_attempt(attempt.status, new):
        log.info(
            "job %s attempt %s: %s -> %s refused",
            attempt.job_id,
            attempt.number,
            attempt.status.value,
            new.value,
        )
        STATUS_MOVES_REFUSED.labels("attempt").inc()
        return False
    attempt.status = new
    if new == JobStatus.RUNNING:
        attempt.started_at = at or utcnow()
        observe_started(attempt)
    if new.terminal:
        attempt.finished_at = at or utcnow()
    return True
