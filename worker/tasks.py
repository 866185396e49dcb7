"""The task workers run: one attempt of one job."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import shared_task

from shared.celery_config import RUN_ATTEMPT_TASK
from shared.message_copies import is_stale, newest_issued
from shared.schemas import TaskMessage
from shared.signing import MessageRefused
from shared.streams import cancel_key, drain_key
from worker import context, draining, identity
from worker.attempt import AttemptRunner
from worker.gpu_slots import Claim
from worker.refusals import record_refusal

log = logging.getLogger(__name__)


@shared_task(name=RUN_ATTEMPT_TASK, bind=True)
def run_attempt(self: Any, *args: Any, **kwargs: Any) -> str:
    """Run one attempt of a job to its end and report it; outcomes travel as events, not results.

    Any arguments are taken, so that a message of any shape meets the signature check (and is
    counted when refused) rather than a TypeError in Celery."""
    draining.handle_sigterm()
    ctx = context.current()
    message = kwargs.get("message")
    try:
        task = ctx.verifier.verify(message if not args else None)
    except MessageRefused as refused:
        record_refusal(ctx.redis, refused, self.request.id, ctx.settings.node_name)
        return "refused"
    assert isinstance(message, dict)
    try:
        return _run(self, ctx, task, message)
    finally:
        # Redis away: a child drained by its own SIGTERM cannot tell, so it stays drained.
        draining.settle(_worker_draining(ctx, unknown=True))


def _run(self: Any, ctx: context.WorkerContext, task: TaskMessage, message: dict[str, Any]) -> str:
    if _replaced(ctx, task):
        # First: a replaced copy is neither put back nor waits for GPUs; the live one does that.
        log.info("job %s attempt %s: an older copy of its message, dropped", task.job_id, task.attempt)
        return "stale"
    if draining.requested() or _worker_draining(ctx):
        # Before the lease, the GPUs and any event: the attempt is not started, so it is not used
        # up and not handed back; the job simply waits for a worker that is not leaving.
        _put_back(self, message, task.spec.queue)
        log.info(
            "job %s attempt %s: this worker drains; back on the queue unstarted", task.job_id, task.attempt
        )
        return "returned"
    if _nothing_to_run(ctx, task):
        claim: Claim | None = Claim(())  # the runner records the cancel, or drops the duplicate
    else:
        claim = ctx.gpu_slots.claim(task.spec, ctx.settings.placement_wait)
    if claim is None:
        _put_back(self, message, task.spec.queue)
        log.info(
            "job %s attempt %s: %d GPUs not free here, back on the queue",
            task.job_id,
            task.attempt,
            task.spec.devices,
        )
        return "requeued"
    with claim:
        log.info("job %s attempt %s: starting", task.job_id, task.attempt)
        ending = AttemptRunner(ctx, task, claim.gpus).run()
    outcome = ending.outcome.value if ending else "duplicate"
    log.info("job %s attempt %s: %s", task.job_id, task.attempt, outcome)
    return outcome


def _worker_draining(ctx: context.WorkerContext, unknown: bool = False) -> bool:
    """This worker's own drain flag, set by its main process at shutdown; `unknown` while Redis is
    away (at a task's start only the local flag counts then)."""
    try:
        return bool(ctx.redis.exists(drain_key(identity.current().key)))
    except redis.RedisError:
        return unknown


def _replaced(ctx: context.WorkerContext, task: TaskMessage) -> bool:
    """Whether the master has sent this attempt again since this copy (shared/message_copies.py).
    Redis away: keep it, the lease still lets one copy run."""
    try:
        return is_stale(task.issued_at, newest_issued(ctx.redis, task.job_id, task.attempt))
    except redis.RedisError:
        return False


def _nothing_to_run(ctx: context.WorkerContext, task: TaskMessage) -> bool:
    """Cancelled, or its lease already taken (a redelivered copy): it needs no GPU, and must not
    wait for one or bounce between nodes."""
    try:
        cancelled = ctx.redis.exists(cancel_key(task.job_id))
        [taken] = ctx.leases.present([(task.job_id, task.attempt)])
    except redis.RedisError:
        return False  # the runner meets the same outage and handles it
    return bool(cancelled) or taken


def _put_back(task: Any, message: dict[str, Any], queue: str) -> None:
    """Publish the message again, at its priority, so a node with free GPUs (or this one, later)
    takes it; this delivery is then acknowledged. It goes as it came, the master's signature with
    it: a worker cannot sign, and needs not. Should the worker die in between, two copies
    exist, and the attempt lease lets only one of them run."""
    delivery = task.request.delivery_info or {}
    task.app.send_task(
        RUN_ATTEMPT_TASK,
        kwargs={"message": message},
        queue=delivery.get("routing_key") or queue,
        priority=delivery.get("priority"),
        task_id=task.request.id,
    )
