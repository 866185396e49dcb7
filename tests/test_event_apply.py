"""Applying events to the database, without Redis: each kind exactly once, out-of-order and late
reports refused, and a bad entry costing only itself (its own savepoint, a warning on its job)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from master.events import apply_entries, apply_event
from master.job_warnings import MAX_WARNINGS, add_warning
from master.lifecycle import RetryPolicy, end_attempt
from master.metrics import HANDBACKS
from master.models import Artifact, Job, JobAttempt, JobMetric
from master.transitions import move_attempt
from shared.events import ArtifactStored, EventData, Finished, Metrics, Started, envelope, parse_event
from shared.schemas import AttemptOutcome
from shared.status import JobStatus

SPEC = {"command": ["true"], "queue": "cpu", "max_retries": 2}


@pytest.fixture
def job_id(engine: Engine) -> int:
    with Session(engine) as session:
        job = Job(queue="cpu", spec=SPEC)
        session.add(job)
        session.flush()
        assert job.id is not None
        session.add(JobAttempt(job_id=job.id, number=1))
        session.commit()
        return job.id


def raw(job_id: int, seq: int, data: EventData, attempt: int = 1) -> bytes:
    return envelope(data, job_id=job_id, attempt=attempt, seq=seq, node="node-1").model_dump_json().encode()


def apply(engine: Engine, *entries: bytes) -> list[str | None]:
    return apply_entries(engine, entries)


def state(engine: Engine, job_id: int) -> tuple[Job, list[JobAttempt]]:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        attempts = list(
            session.exec(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by("number"))
        )
        session.expunge_all()
        return job, attempts


KINDS: list[EventData] = [
    Started(pid=1),
    Metrics(kind="metrics", step=2, epoch=1, max_epochs=3, metrics={"loss": 0.5}),
    ArtifactStored(name="model.pt", key="artifacts/1/model.pt", size=5, sha256="a" * 64),
    Finished(outcome=AttemptOutcome.SUCCEEDED, exit_code=0, log_key="logs/1/attempt-1.log", log_tail="ok"),
]


@pytest.mark.parametrize("upto", range(1, len(KINDS) + 1), ids=["started", "metrics", "artifact", "finished"])
def test_each_kind_applied_twice_counts_once(engine: Engine, job_id: int, upto: int) -> None:
    entries = [raw(job_id, seq, data) for seq, data in enumerate(KINDS[:upto], start=1)]
    assert apply(engine, *entries) == [None] * upto
    before = state(engine, job_id)
    with Session(engine) as session:  # the replay: Redis delivered the same entries again
        assert [apply_event(session, parse_event(e)) for e in entries] == [False] * upto
        session.commit()
        metrics = session.exec(select(JobMetric)).all()
        artifacts = session.exec(select(Artifact)).all()
    after = state(engine, job_id)
    assert after[0].model_dump() == before[0].model_dump()
    assert [a.model_dump() for a in after[1]] == [a.model_dump() for a in before[1]]
    assert len(metrics) == (1 if upto >= 2 else 0)
    assert len(artifacts) == (1 if upto >= 3 else 0)


def test_the_whole_attempt_moves_the_job(engine: Engine, job_id: int) -> None:
    apply(engine, *(raw(job_id, seq, data) for seq, data in enumerate(KINDS, start=1)))
    job, [attempt] = state(engine, job_id)
    assert (job.status, attempt.status) == (JobStatus.SUCCEEDED, JobStatus.SUCCEEDED)
    assert job.metrics == {"loss": 0.5}
    assert job.progress == {"epoch": 1, "step": 2, "max_epochs": 3, "attempt": 1}
    assert (attempt.node, attempt.info, attempt.log_key) == ("node-1", {"pid": 1}, "logs/1/attempt-1.log")
    assert job.started_at is not None and job.finished_at is not None and job.log_tail == "ok"


def test_an_older_event_after_a_newer_one_is_dropped(engine: Engine, job_id: int) -> None:
    finished = raw(job_id, 3, Finished(outcome=AttemptOutcome.SUCCEEDED, exit_code=0))
    late_metrics = raw(job_id, 2, Metrics(metrics={"loss": 9.0}))
    apply(engine, raw(job_id, 1, Started(pid=1)), finished, late_metrics)
    job, [attempt] = state(engine, job_id)
    assert job.status == JobStatus.SUCCEEDED and job.metrics == {}
    assert attempt.last_event_seq == 3


def test_a_finished_report_after_the_attempt_was_declared_lost_starts_no_second_retry(
    engine: Engine, job_id: int
) -> None:
    apply(engine, raw(job_id, 1, Started(pid=1)))
    with Session(engine) as session:  # the reaper's verdict: lost, retried as attempt 2
        job = session.get(Job, job_id)
        attempt = session.exec(select(JobAttempt).where(JobAttempt.job_id == job_id)).one()
        assert job is not None and move_attempt(attempt, JobStatus.FAILED)
        end_attempt(session, job, attempt, AttemptOutcome.FAILED, retryable=True, error="worker lost")
        session.add_all([job, attempt])
        session.commit()
    late = Finished(outcome=AttemptOutcome.FAILED, retryable=True, log_key=f"logs/{job_id}/late.log")
    assert apply(engine, raw(job_id, 2, late)) == [None]
    job, attempts = state(engine, job_id)
    assert job.attempts == 2 and len(attempts) == 2  # not three
    assert attempts[0].status == JobStatus.FAILED and attempts[0].log_key == f"logs/{job_id}/late.log"


def test_events_of_a_retried_attempt_do_not_move_the_job(engine: Engine, job_id: int) -> None:
    apply(engine, raw(job_id, 1, Started(pid=1)))
    apply(engine, raw(job_id, 2, Finished(outcome=AttemptOutcome.FAILED, retryable=True, error="boom")))
    job, attempts = state(engine, job_id)
    assert (job.status, job.attempts, len(attempts)) == (JobStatus.QUEUED, 2, 2)
    # A metrics line of attempt 1 that arrives now is kept in the history only.
    apply(engine, raw(job_id, 3, Metrics(metrics={"loss": 1.0})))
    job, _ = state(engine, job_id)
    assert job.metrics == {} and job.status == JobStatus.QUEUED


def test_a_bad_entry_is_reported_and_noted_on_its_job_and_the_rest_applied(
    engine: Engine, job_id: int
) -> None:
    bad = {
        "job_id": job_id,
        "attempt": 1,
        "seq": 2,
        "node": "n",
        "kind": "metrics",
        "data": {"kind": "metrics", "metrics": {"loss": "x"}},
    }
    reasons = apply(
        engine,
        raw(job_id, 1, Started(pid=1)),
        json.dumps(bad).encode(),
        b"not json",
        raw(job_id, 3, Metrics(metrics={"loss": 0.25})),
    )
    assert reasons[0] is None and reasons[3] is None
    assert reasons[1] is not None and "metrics.data.metrics.loss" in reasons[1]
    assert reasons[2] is not None and reasons[2].startswith("invalid event:")
    job, _ = state(engine, job_id)
    assert job.metrics == {"loss": 0.25} and job.status == JobStatus.RUNNING
    assert len(job.warnings) == 1 and "metrics.data.metrics.loss" in job.warnings[0]


def test_an_event_that_fails_to_apply_is_rolled_back_alone(engine: Engine, job_id: int) -> None:
    """The fault: a job row whose spec no longer validates, so ending its attempt raises."""
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.spec = {"nonsense": True}
        session.add(job)
        session.commit()
    reasons = apply(
        engine,
        raw(job_id, 1, Started(pid=1)),
        raw(job_id, 2, Metrics(metrics={"loss": 0.5})),
        raw(job_id, 3, Finished(outcome=AttemptOutcome.FAILED, retryable=True)),
        raw(job_id, 4, Metrics(metrics={"acc": 0.9})),
    )
    assert reasons[:2] == [None, None] and reasons[3] is None
    assert reasons[2] is not None and "finished event 3" in reasons[2] and "ValidationError" in reasons[2]
    job, [attempt] = state(engine, job_id)
    # Nothing of the failed event stayed (the attempt is still running); the events around it did.
    assert attempt.status == JobStatus.RUNNING and attempt.last_event_seq == 4
    assert job.metrics == {"loss": 0.5, "acc": 0.9}
    assert len(job.warnings) == 1 and "finished event 3" in job.warnings[0]


def test_an_attempt_that_finished_without_a_started_report_still_ends_its_job(
    engine: Engine, job_id: int
) -> None:
    """Its `started` was dead-lettered: the job must not wait in `queued` forever."""
    apply(engine, raw(job_id, 2, Finished(outcome=AttemptOutcome.SUCCEEDED, exit_code=0)))
    job, [attempt] = state(engine, job_id)
    assert (job.status, attempt.status) == (JobStatus.SUCCEEDED, JobStatus.SUCCEEDED)
    assert job.started_at is not None and attempt.started_at is not None


def test_an_event_for_an_unknown_job_is_dropped(engine: Engine) -> None:
    assert apply(engine, raw(999, 1, Started(pid=1))) == [None]


def test_warnings_keep_the_newest_few() -> None:
    job = Job(queue="cpu", spec=SPEC)
    for i in range(MAX_WARNINGS + 5):
        add_warning(job, f"w{i}")
    add_warning(job, "x" * 10_000)
    assert len(job.warnings) == MAX_WARNINGS
    assert job.warnings[0] == "w6" and len(job.warnings[-1]) < 1000


def test_a_storm_of_hand_back_events_ends_the_job(engine: Engine, job_id: int) -> None:
    policy = RetryPolicy(max_handbacks=2)
    handed = Finished(outcome=AttemptOutcome.FAILED, retryable=True, handed_back=True, error="handed back")
    counted = HANDBACKS._value.get()
    for number in range(1, 10):
        reasons = apply_entries(
            engine,
            [raw(job_id, 1, Started(pid=1), attempt=number), raw(job_id, 2, handed, attempt=number)],
            policy,
        )
        assert reasons == [None, None]
        job, _ = state(engine, job_id)
        if job.status.terminal:
            break
    # Two free hand-backs, then three that count: the first try plus max_retries=2.
    assert (job.status, job.attempts, job.handbacks) == (JobStatus.FAILED, 5, 2)
    assert len(job.warnings) == 3
    # Every hand-back is counted for /metrics, free or not: a storm shows on the farm's graphs.
    assert HANDBACKS._value.get() == counted + 5


@pytest.mark.parametrize(
    "data",
    [
        ArtifactStored(name="model.pt", key="code/" + "a" * 64, size=5),  # someone's code bundle
        ArtifactStored(name="model.pt", key="artifacts/999/model.pt", size=5),  # another job's
        ArtifactStored(name="model.pt", key="datasets/digits.csv", size=5),
        ArtifactStored(name="x", key="artifacts/1/../../datasets/digits.csv", size=5),
        Finished(outcome=AttemptOutcome.SUCCEEDED, log_key="artifacts/999/secret.txt"),
    ],
    ids=["code", "other-job", "dataset", "dot-dot", "log-key"],
)
def test_an_event_naming_a_key_outside_its_job_is_refused(
    engine: Engine, job_id: int, data: EventData
) -> None:
    # The master serves artifacts and logs with its own S3 identity: a forged key would be a way in.
    [reason] = apply(engine, raw(job_id, 1, data))
    assert reason is not None and "is not under" in reason
    with Session(engine) as session:
        assert session.exec(select(Artifact)).all() == []
    _, [attempt] = state(engine, job_id)
    assert attempt.log_key is None


def worker_event(job_id: int, seq: int, data: EventData, worker: str) -> bytes:
    event = envelope(data, job_id=job_id, attempt=1, seq=seq, node="node-1", worker=worker)
    return event.model_dump_json().encode()


def test_the_attempt_is_the_worker_whose_started_came_first(engine: Engine, job_id: int) -> None:
    # A metrics line before any `started` binds nothing; the first `started` does.
    assert apply(engine, worker_event(job_id, 1, Metrics(metrics={"early": 1.0}), "node-9#other")) == [None]
    assert apply(engine, worker_event(job_id, 2, Started(pid=1), "node-1#abc")) == [None]
    apply(engine, worker_event(job_id, 3, Metrics(metrics={"forged": 1.0}), "node-9#other"))
    apply(engine, worker_event(job_id, 4, Metrics(metrics={"own": 1.0}), "node-1#abc"))
    job, [attempt] = state(engine, job_id)
    assert attempt.worker == "node-1#abc"
    assert set(job.metrics) == {"early", "own"}
