"""The task workers run: one attempt of one job."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from shared.celery_config import RUN_ATTEMPT_TASK
from shared.schemas import TaskMessage
from worker import context, draining
from worker.attempt import AttemptRunner

log = logging.getLogger(__name__)


@shared_task(name=RUN_ATTEMPT_TASK, bind=True)
def run_attempt(self: Any, message: dict[str, Any]) -> str:
    """Run one attempt of a job to its end and report it; outcomes travel as events, not results."""
    draining.handle_sigterm()
    task = TaskMessage.model_validate(message)
    log.info("job %s attempt %s: starting", task.job_id, task.attempt)
    ending = AttemptRunner(context.current(), task).run()
    outcome = ending.outcome.value if ending else "duplicate"
    log.info("job %s attempt %s: %s", task.job_id, task.attempt, outcome)
    return outcome
