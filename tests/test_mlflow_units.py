"""The MLflow mirror's decisions without any server: what a run holds (params, keys, limits,
metric steps, closing tags), the retry schedule, credentials, and which jobs a round takes."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, select

from master.mlflow_mirror import runs
from master.mlflow_mirror.mirror import CLAIM_WINDOW, RETRY_CAP, MlflowMirror, retry_delay
from master.mlflow_mirror.rest import split_credentials
from master.models import Artifact, Job, JobMetric, MlflowRun, utcnow
from shared.settings import Settings
from shared.status import JobStatus
from trainfarm.services.process import free_port


def test_params_are_flat_strings_with_the_spec_fields_and_hyperparameters_win_a_clash():
    spec = {
        "hyperparameters": {"lr": 0.01, "layers": [64, 32], "opt": {"name": "adam", "beta": 0.9}, "seed": 3},
        "max_epochs": 2,
        "seed": 0,
        "devices": 1,
        "queue": "cpu",
        "command": ["python", "-c", "print('hi there')"],
        "recipe": None,
    }
    assert runs.run_params(spec) == {
        "lr": "0.01",
        "layers": "[64,32]",
        "opt.name": "adam",
        "opt.beta": "0.9",
        "seed": "3",  # the hyperparameter's, not the spec's 0
        "max_epochs": "2",
        "devices": "1",
        "queue": "cpu",
        "command": shlex.join(["python", "-c", "print('hi there')"]),
    }
    recipe = runs.run_params(
        {"recipe": "tabular-classifier", "max_epochs": 1, "hyperparameters": {"flag": True}}
    )
    assert recipe == {"flag": "True", "max_epochs": "1", "recipe": "tabular-classifier"}


def test_keys_and_values_are_cut_to_mlflows_limits():
    assert runs.mlflow_key("val/acc top-1 (%)") == "val/acc top-1 ___"
    assert runs.mlflow_key("é") == "_" and runs.mlflow_key("") == "_"
    assert len(runs.mlflow_key("k" * 400)) == runs.MAX_KEY
    params = runs.run_params({"hyperparameters": {"long": "v" * 7000, "a!": 1, "a?": 2}})
    assert len(params["long"]) == runs.MAX_PARAM_VALUE and params["long"].endswith("...")
    assert params["a_"] == "1"  # the first of two names that become the same key


def _job(**fields: object) -> Job:
    values: dict[str, object] = {"id": 7, "queue": "cpu", "spec": {}, "owner": "alice", "project": "vision"}
    return Job(**{**values, **fields})


def test_run_tags_say_who_what_and_where():
    tags = runs.run_tags(_job(tags=["baseline", "lr:0.01"]), "https://farm.example")
    assert tags == {
        "trainfarm.job_id": "7",
        "trainfarm.project": "vision",
        "trainfarm.tags": "baseline,lr:0.01",
        "trainfarm.url": "https://farm.example/#job-7",
        "trainfarm.owner": "alice",
        "mlflow.user": "alice",
    }
    assert "mlflow.user" not in runs.run_tags(_job(owner=None), "http://x")
    assert runs.run_name(_job(name="resnet")) == "resnet" and runs.run_name(_job()) == "job-7"


def test_metric_points_take_the_step_else_the_epoch_and_the_time_in_ms():
    ts = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    rows = [
        JobMetric(
            id=1, job_id=7, attempt=1, kind="metrics", step=10, epoch=0, values={"loss": 0.5, "a b": 1}, ts=ts
        ),
        JobMetric(
            id=2,
            job_id=7,
            attempt=1,
            kind="metrics",
            epoch=3,
            values={"acc": 0.75},
            ts=ts.replace(tzinfo=None),
        ),
        JobMetric(id=3, job_id=7, attempt=1, kind="progress", values={}, ts=ts),
        JobMetric(id=4, job_id=7, attempt=1, kind="metrics", values={"x": 2}, ts=ts),
    ]
    ms = int(ts.timestamp() * 1000)
    assert ms % 1000 == 678
    assert runs.metric_points(rows) == [
        {"key": "loss", "value": 0.5, "timestamp": ms, "step": 10},
        {"key": "a b", "value": 1.0, "timestamp": ms, "step": 10},
        {"key": "acc", "value": 0.75, "timestamp": ms, "step": 3},  # naive time read as UTC
        {"key": "x", "value": 2.0, "timestamp": ms, "step": 0},
    ]


def test_closing_tags_link_each_artifact_and_the_final_status_maps_to_mlflows():
    artifacts = [
        Artifact(job_id=7, name="out/model v1.ckpt", size=123, attempt=1, key="k"),
        Artifact(job_id=7, name="metrics.json", size=9, attempt=1, key="k"),
    ]
    tags = runs.closing_tags(_job(status=JobStatus.FAILED, error="exit code 1"), artifacts, "http://farm")
    assert tags == {
        "trainfarm.status": "failed",
        "trainfarm.artifacts": "http://farm/api/jobs/7/artifacts (2 files)",
        "trainfarm.artifact.metrics.json": "http://farm/api/jobs/7/artifacts/metrics.json (9 bytes)",
        "trainfarm.artifact.out/model v1.ckpt": "http://farm/api/jobs/7/artifacts/out/model%20v1.ckpt (123 bytes)",
        "trainfarm.error": "exit code 1",
    }
    many = [Artifact(job_id=7, name=f"f{i:03}", size=1, attempt=1, key="k") for i in range(150)]
    tags = runs.closing_tags(_job(status=JobStatus.SUCCEEDED), many, "http://farm")
    assert len([k for k in tags if k.startswith("trainfarm.artifact.")]) == runs.MAX_ARTIFACT_TAGS
    assert tags["trainfarm.artifacts"].endswith("(150 files)")
    assert runs.FINAL_STATUS == {
        JobStatus.SUCCEEDED: "FINISHED",
        JobStatus.FAILED: "FAILED",
        JobStatus.CANCELLED: "KILLED",
        JobStatus.PRUNED: "KILLED",
    }


def test_retries_wait_twice_as_long_each_time_up_to_ten_minutes():
    assert [retry_delay(n) for n in range(1, 13)] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]
    assert RETRY_CAP == 600 and retry_delay(10_000) == 600


def test_credentials_in_the_uri_become_basic_auth_and_leave_the_url():
    base, auth = split_credentials("https://mirror:p%40ss@mlflow.example:5000/")
    assert base == "https://mlflow.example:5000"
    assert auth is not None
    request = next(auth.auth_flow(httpx.Request("GET", base)))
    assert request.headers["Authorization"] == httpx.BasicAuth("mirror", "p@ss")._auth_header
    assert split_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None)


def _mirror(engine: Engine, tmp_path: Path) -> MlflowMirror:
    settings = Settings(data_dir=tmp_path, mlflow_tracking_uri="http://127.0.0.1:9")  # type: ignore[arg-type]
    return MlflowMirror(engine, settings)


def _add_jobs(engine: Engine, count: int, **fields: object) -> list[int]:
    with Session(engine) as session:
        jobs = [Job(queue="cpu", spec={}, **fields) for _ in range(count)]  # type: ignore[arg-type]
        session.add_all(jobs)
        session.commit()
        return [job.id for job in jobs]  # type: ignore[misc]


def test_a_new_mirror_takes_the_newest_jobs_of_the_history_then_every_new_one(engine, tmp_path):
    mirror = _mirror(engine, tmp_path)
    with Session(engine) as session:
        assert mirror.claim(session) == 0  # no jobs at all
    ids = _add_jobs(engine, CLAIM_WINDOW + 100)
    with Session(engine) as session:
        assert mirror.claim(session) == CLAIM_WINDOW
        assert mirror.claim(session) == 0
        claimed = sorted(session.exec(select(MlflowRun.job_id)))
    assert claimed == ids[-CLAIM_WINDOW:]
    more = _add_jobs(engine, 3)
    with Session(engine) as session:
        assert mirror.claim(session) == 3
        assert sorted(session.exec(select(MlflowRun.job_id)))[-3:] == more


def test_a_round_takes_started_or_ended_jobs_least_recently_served_first(engine, tmp_path):
    mirror = _mirror(engine, tmp_path)
    now = utcnow()
    _add_jobs(engine, 1)  # queued: not started, not taken
    [served_last, served_first] = _add_jobs(engine, 2, started_at=now, status=JobStatus.RUNNING)
    [cancelled] = _add_jobs(engine, 1, finished_at=now, status=JobStatus.CANCELLED)
    [waiting] = _add_jobs(engine, 1, started_at=now, status=JobStatus.RUNNING)
    [done] = _add_jobs(engine, 1, started_at=now, finished_at=now, status=JobStatus.SUCCEEDED)
    with Session(engine) as session:
        mirror.claim(session)
        rows = {row.job_id: row for row in session.exec(select(MlflowRun))}
        rows[served_last].next_at = now - timedelta(seconds=1)
        rows[served_first].next_at = now - timedelta(seconds=5)
        rows[cancelled].next_at = now - timedelta(seconds=3)
        rows[waiting].next_at = now + timedelta(seconds=60)  # backing off
        rows[done].finished = True
        session.commit()
        assert [job.id for _, job in mirror.due(session)] == [served_first, cancelled, served_last]


def test_runs_waiting_on_a_failure_are_due_at_once_when_mlflow_answers_again(engine, tmp_path):
    mirror = _mirror(engine, tmp_path)
    later = utcnow() + timedelta(minutes=10)
    [failed, following] = _add_jobs(engine, 2, started_at=utcnow(), status=JobStatus.RUNNING)
    with Session(engine) as session:
        mirror.claim(session)
        rows = {row.job_id: row for row in session.exec(select(MlflowRun))}
        rows[failed].attempts, rows[failed].next_at = 4, later
        rows[following].next_at = later  # served a moment ago, not failing: keeps its time
        session.commit()
        mirror.retry_now(session)
        assert [job.id for _, job in mirror.due(session)] == [failed]


def test_a_failed_try_backs_off_and_while_mlflow_is_away_a_round_only_pings(engine, tmp_path):
    settings = Settings(data_dir=tmp_path, mlflow_tracking_uri=f"http://u:pw@127.0.0.1:{free_port()}")  # type: ignore[arg-type]
    mirror = MlflowMirror(engine, settings)
    [job_id] = _add_jobs(engine, 1, started_at=utcnow(), status=JobStatus.RUNNING)
    before = utcnow()
    mirror.round()
    with Session(engine) as session:
        row = session.get(MlflowRun, job_id)
        assert row is not None and row.attempts == 1 and row.run_id is None and not row.finished
        assert row.last_error is not None and "ConnectError" in row.last_error and "pw" not in row.last_error
        next_at = row.next_at if row.next_at.tzinfo else row.next_at.replace(tzinfo=UTC)
        assert next_at >= before + timedelta(seconds=retry_delay(1))
        row.next_at = before  # due again: a round still only pings, and counts no new failure
        session.commit()
    mirror.round()
    with Session(engine) as session:
        row = session.get(MlflowRun, job_id)
        assert row is not None and row.attempts == 1
