"""The decisions behind every status change, without services: the transition tables and the one
door through them, the retry backoff, the lease reaper's verdicts and the hand-back bound."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from master.lifecycle import RetryPolicy, end_attempt, retry_delay
from master.models import Job, JobAttempt, utcnow
from master.reaper import overdue
from master.transitions import move_attempt, move_job
from shared.schemas import AttemptOutcome
from shared.status import ALLOWED, ATTEMPT_ALLOWED, JobStatus, can_move, can_move_attempt

Q, R, S, F, C, P = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.PRUNED,
)
JOB_MOVES = {(Q, R), (Q, C), (Q, F), (Q, P), (R, S), (R, F), (R, C), (R, Q), (R, P)}
ATTEMPT_MOVES = {(Q, R), (Q, C), (Q, F), (R, S), (R, F), (R, C)}
PAIRS = [(a, b) for a in JobStatus for b in JobStatus]


@pytest.mark.parametrize(("current", "new"), PAIRS)
def test_the_job_table_allows_exactly_its_moves(current: JobStatus, new: JobStatus) -> None:
    assert can_move(current, new) == ((current, new) in JOB_MOVES)


@pytest.mark.parametrize(("current", "new"), PAIRS)
def test_the_attempt_table_allows_exactly_its_moves(current: JobStatus, new: JobStatus) -> None:
    assert can_move_attempt(current, new) == ((current, new) in ATTEMPT_MOVES)


def test_running_to_queued_is_a_job_edge_only() -> None:
    assert can_move(R, Q) and not can_move_attempt(R, Q)
    assert set(ALLOWED) == set(ATTEMPT_ALLOWED) == set(JobStatus)


ROOT = Path(__file__).resolve().parent.parent


def _status_writes(path: Path) -> list[int]:
    """Lines of `path` that assign to some object's `.status` (plain, tuple or augmented)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            parts = target.elts if isinstance(target, ast.Tuple) else [target]
            found += [t.lineno for t in parts if isinstance(t, ast.Attribute) and t.attr == "status"]
    return found


#: Each thing with a status has one door its writes go through.
DOORS = {
    "master/transitions.py": "jobs and attempts: move_job, move_attempt",
    "master/sweeps/ending.py": "sweeps: end_sweep",
    "master/notify/sender.py": "webhook deliveries: Sender._record",
}


def test_every_status_write_goes_through_the_one_door() -> None:
    writes = {
        name: lines
        for folder in ("master", "shared")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (name := str(path.relative_to(ROOT))) not in DOORS and (lines := _status_writes(path))
    }
    assert writes == {}, f"write status through its door: {DOORS}"
    for door in DOORS:
        assert _status_writes(ROOT / door), door  # the doors themselves are seen


def test_move_job_stamps_times_and_refuses_without_changing_anything() -> None:
    job = Job(id=1, queue="cpu", spec={})
    assert move_job(job, R)
    started = job.started_at
    assert started is not None and job.finished_at is None
    assert move_job(job, Q) and move_job(job, R)
    assert job.started_at == started  # the first start is kept across retries
    assert move_job(job, S)
    finished = job.finished_at
    assert finished is not None
    assert not move_job(job, R)  # a late "started" after the end
    assert (job.status, job.finished_at) == (S, finished)


def test_move_attempt_refuses_backwards_and_after_the_end() -> None:
    attempt = JobAttempt(job_id=1, number=1)
    assert not move_attempt(attempt, S)  # cannot succeed without having run
    assert attempt.status == Q
    assert move_attempt(attempt, R) and attempt.started_at is not None
    assert not move_attempt(attempt, Q)
    assert move_attempt(attempt, F) and attempt.finished_at is not None
    assert not move_attempt(attempt, S)
    assert attempt.status == F


# --- retry backoff -------------------------------------------------------------------------------


def test_retry_delay_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=2.0, max_delay=300.0)
    assert [retry_delay(n, policy) for n in range(0, 6)] == [0.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert retry_delay(9, policy) == 300.0
    assert retry_delay(10**6, policy) == 300.0  # no OverflowError however many failures
    assert retry_delay(3, policy, jitter=0.5) == 4.0


# --- lease reaper --------------------------------------------------------------------------------


def test_reaper_waits_the_grace_before_declaring_an_attempt_lost() -> None:
    a, b = (1, 1), (2, 1)
    due, missing = overdue({a: False, b: True}, {}, now=100.0, grace=7.5)
    assert due == [] and missing == {a: 100.0}
    due, missing = overdue({a: False, b: True}, missing, now=107.0, grace=7.5)
    assert due == []
    due, missing = overdue({a: False, b: True}, missing, now=107.5, grace=7.5)
    assert due == [a] and missing == {a: 100.0}


def test_reaper_forgets_attempts_whose_lease_is_back_or_that_stopped_running() -> None:
    a, b = (1, 1), (2, 1)
    _, missing = overdue({a: False, b: False}, {}, now=0.0, grace=5.0)
    due, missing = overdue({a: True}, missing, now=4.0, grace=5.0)  # a renewed; b ended
    assert due == [] and missing == {}
    due, missing = overdue({a: False}, missing, now=6.0, grace=5.0)
    assert due == [] and missing == {a: 6.0}  # a new absence starts a new grace


def test_reaper_with_no_grace_declares_at_once() -> None:
    due, _ = overdue({(1, 1): False}, {}, now=0.0, grace=0.0)
    assert due == [(1, 1)]


# --- hand-back bound -----------------------------------------------------------------------------


def _running_job(session: Session, max_retries: int) -> tuple[Job, JobAttempt]:
    spec = {"command": ["true"], "queue": "cpu", "max_retries": max_retries}
    job = Job(queue="cpu", spec=spec, status=R)
    session.add(job)
    session.flush()
    attempt = JobAttempt(job_id=job.id, number=1, status=R)  # type: ignore[arg-type]
    session.add(attempt)
    session.flush()
    return job, attempt


def _hand_back(session: Session, job: Job, attempt: JobAttempt, policy: RetryPolicy) -> JobAttempt | None:
    """The worker gave the attempt back; the next attempt, or None when the job ended."""
    move_attempt(attempt, F)
    end_attempt(
        session,
        job,
        attempt,
        AttemptOutcome.FAILED,
        retryable=True,
        error="handed back: node-1 shut down",
        handed_back=True,
        policy=policy,
    )
    session.flush()
    if job.status.terminal:
        return None
    nxt = session.get(JobAttempt, attempt.id + 1)  # type: ignore[operator]
    assert nxt is not None and nxt.number == attempt.number + 1
    move_job(job, R)
    move_attempt(nxt, R)
    return nxt


def test_hand_backs_are_free_up_to_the_bound_then_use_the_retries(engine: Engine) -> None:
    policy = RetryPolicy(max_handbacks=3)
    with Session(engine) as session:
        job, attempt = _running_job(session, max_retries=2)
        current: JobAttempt | None = attempt
        for _ in range(3):  # free: no backoff, no retry used
            assert current is not None
            current = _hand_back(session, job, current, policy)
            assert current is not None and current.not_before is not None
            assert current.not_before <= utcnow() + timedelta(milliseconds=50)
        assert (job.handbacks, job.warnings) == (3, [])
        assert current is not None
        current = _hand_back(session, job, current, policy)  # beyond: a failed attempt, backoff 1
        assert current is not None and job.handbacks == 3
        assert len(job.warnings) == 1 and "max_handbacks" in job.warnings[0]
        assert current.not_before is not None and current.not_before > utcnow()
        current = _hand_back(session, job, current, policy)  # the second retry
        assert current is not None
        assert _hand_back(session, job, current, policy) is None  # no retries left: the storm ends
        assert job.status == F and job.attempts == 6
        assert job.error is not None
        assert "beyond the limit of 3 hand-backs" in job.error
        assert "no retries left after 3 failed attempts" in job.error
        assert len(job.warnings) == 3


def test_a_job_that_ended_meanwhile_gets_no_new_attempt(engine: Engine) -> None:
    with Session(engine) as session:
        job, attempt = _running_job(session, max_retries=2)
        move_job(job, C)  # ended by another path
        move_attempt(attempt, F)
        end_attempt(session, job, attempt, AttemptOutcome.FAILED, retryable=True, error="boom")
        session.flush()
        assert (job.status, job.attempts) == (C, 1)
