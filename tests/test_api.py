"""The REST contract on both database backends, against the in-process app with real Redis and S3.
No worker runs here, so jobs stay where the API put them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from master.app import create_app
from master.db import init_db, make_engine
from master.models import Job, JobAttempt
from master.published_marks import PublishedMarks
from shared.celery_config import celery_priority
from shared.settings import Settings
from shared.streams import NODES_KEY, cancel_key
from tests.conftest import admin_headers, wait_for

COMMAND = {"command": ["python", "-c", "print(1)"], "queue": "cpu"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(
        create_app(settings), base_url="http://testserver/api", headers=admin_headers(settings)
    ) as test_client:
        yield test_client


def error_of(response) -> dict:
    assert response.status_code == 422, response.text
    return response.json()


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({**COMMAND, "devices": 0}, "devices", "greater than or equal to 1"),
        ({**COMMAND, "gpus": 1}, "gpus", "unknown field"),
        ({**COMMAND, "max_epochs": "ten"}, "max_epochs", "valid integer"),
        ({**COMMAND, "queue": "tpu"}, "queue", "'gpu' or 'cpu'"),
        ({**COMMAND, "name": "bad name!"}, "name", "pattern"),
        ({"queue": "cpu"}, "body", "exactly one of 'recipe' or 'command'"),
        (
            {"recipe": "tabular-classifier", "datasets": ["x.csv"]},
            "body",
            "hyperparameters.target is required",
        ),
        ({"recipe": "resnet", "datasets": ["x.csv"]}, "recipe", "tabular-classifier"),
        ({**COMMAND, "priority": 11}, "priority", "less than or equal to 9"),
    ],
)
def test_invalid_specs_are_rejected_naming_the_field(client, spec, field, words):
    body = error_of(client.post("/jobs", json=spec))
    assert body["field"] == field
    assert words in body["message"]
    assert client.get("/jobs").json()["items"] == []


def test_missing_dataset_is_rejected_with_its_index(client):
    body = error_of(client.post("/jobs", json={**COMMAND, "datasets": ["nope.csv"]}))
    assert body["field"] == "datasets[0]"
    assert "dataset 'nope.csv' not found" in body["message"]


def test_unknown_job_is_404(client):
    response = client.get("/jobs/999999")
    assert response.status_code == 404
    assert response.json()["message"] == "job 999999 not found"


def test_list_is_newest_first_filtered_and_paginated(client):
    ids = [client.post("/jobs", json={**COMMAND, "queue": q}).json()["id"] for q in ["cpu", "gpu"] * 3]
    page = client.get("/jobs", params={"limit": 4}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:4]
    rest = client.get("/jobs", params={"limit": 4, "before": page["next_before"]}).json()
    assert [j["id"] for j in rest["items"]] == ids[::-1][4:]
    assert rest["next_before"] is None
    gpu = client.get("/jobs", params={"queue": "gpu"}).json()["items"]
    assert [j["id"] for j in gpu] == ids[1::2][::-1]
    assert client.get("/jobs", params={"status": "running"}).json()["items"] == []
    assert error_of(client.get("/jobs", params={"status": "sleeping"}))["field"] == "status"
    assert error_of(client.get("/jobs", params={"limit": 0}))["field"] == "limit"


#: How far ahead a stand-in worker's beat is dated: it stays fresh for any test's length.
FRESH_FOR = 3600.0


def beat_as_a_worker(broker: redis.Redis, queues: list[str], concurrency: int = 1) -> None:
    """A worker's heartbeat, as worker/heartbeat.py writes it: admission then sees job slots on
    `queues` (no worker process runs; nothing takes the messages). Dated ahead, as if it beat
    throughout the test: a beat gone stale reads as a worker that died holding a message, and
    the master would send the waiting ones again (master/dead_workers.py)."""
    seconds, micros = broker.time()
    ts = seconds + micros / 1e6 + FRESH_FOR
    beat = {"ts": ts, "queues": queues, "concurrency": concurrency, "gpu_slots": []}
    broker.hset(NODES_KEY, "api-test#1", json.dumps({**beat, "worker": "api-test#1"}))


def test_submit_waits_for_a_worker_then_publishes_with_priority(client, settings):
    broker = redis.Redis.from_url(settings.redis_connection_url())
    job = client.post("/jobs", json={**COMMAND, "queue": "gpu", "priority": 9}).json()
    # No worker serves the queue yet: the job waits, unpublished, and says why.
    wait_for(
        lambda: (
            client.get(f"/jobs/{job['id']}").json()["wait_reason"]
            == "waiting: no worker online takes jobs from queue gpu"
        ),
        timeout=10,
        what="admission to look at the job",
    )
    assert broker.llen("gpu") == 0
    beat_as_a_worker(broker, ["gpu"], concurrency=2)
    # Spec priority 9 is most urgent and lands in the list the Redis transport serves first.
    assert celery_priority(9) == 0
    wait_for(lambda: broker.llen("gpu") == 1, timeout=10, what="admission to publish the job")
    assert broker.llen("cpu") == 0
    assert (
        client.get(f"/jobs/{job['id']}").json()["wait_reason"].startswith("starting: sent to the gpu queue")
    )
    # The publish is recorded a moment later, off the request path (master/published_marks.py).
    wait_for(
        lambda: client.get(f"/jobs/{job['id']}").json()["attempt_list"][0]["enqueued_at"],
        timeout=10,
        what="the publish to be recorded",
    )
    # With the admitter idle, a submission is decided in its own request: its message is on the
    # queue before the 201 leaves, and the 201 says so.
    second = client.post("/jobs", json={**COMMAND, "queue": "gpu", "priority": 9}).json()
    assert second["wait_reason"].startswith("starting: sent to the gpu queue")
    assert broker.llen("gpu") == 2
    third = client.post("/jobs", json={**COMMAND, "queue": "gpu", "priority": 9}).json()
    assert third["wait_reason"] == "waiting: no free worker slot on gpu (2 in use)"
    assert broker.llen("gpu") == 2


def test_cancel_queued_job_marks_it_and_sets_the_flag(client, settings):
    job_id = client.post("/jobs", json=COMMAND).json()["id"]
    cancelled = client.post(f"/jobs/{job_id}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancel_requested"] is True
    assert redis.Redis.from_url(settings.redis_url).exists(cancel_key(job_id)) == 1
    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already ended (cancelled)" in again.json()["message"]


def test_batch_submission_is_all_or_nothing(client):
    ok = client.post("/jobs/batch", json={"jobs": [COMMAND] * 20})
    assert ok.status_code == 201 and len(ok.json()) == 20
    bad = client.post("/jobs/batch", json={"jobs": [COMMAND, {**COMMAND, "devices": -1}]})
    assert error_of(bad)["field"] == "jobs[1].devices"
    assert len(client.get("/jobs", params={"limit": 500}).json()["items"]) == 20


def test_dataset_upload_list_and_conflicts(client):
    payload = b"a,b\n1,2\n" * 100_000
    created = client.post("/datasets", params={"name": "tiny.csv"}, content=payload)
    assert created.status_code == 201, created.text
    import hashlib

    assert created.json()["size"] == len(payload)
    assert created.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    assert [d["name"] for d in client.get("/datasets").json()] == ["tiny.csv"]
    assert client.post("/datasets", params={"name": "tiny.csv"}, content=b"x").status_code == 409
    replaced = client.post("/datasets", params={"name": "tiny.csv", "overwrite": "true"}, content=b"x,y\n")
    assert replaced.status_code == 201 and replaced.json()["size"] == 4
    assert error_of(client.post("/datasets", params={"name": "../etc"}, content=b"x"))["field"] == "name"
    assert error_of(client.post("/datasets", params={"name": "empty.csv"}, content=b""))["field"] == "body"
    assert client.get("/datasets/missing.csv").status_code == 404


def test_health_and_prometheus(client, settings):
    health = client.get("/health").json()
    assert health == {"status": "ok", "database": "ok", "redis": "ok", "s3": "ok"}
    beat_as_a_worker(redis.Redis.from_url(settings.redis_connection_url()), ["cpu"])
    job_id = client.post("/jobs", json=COMMAND).json()["id"]
    wait_for(
        lambda: client.get(f"/jobs/{job_id}").json()["attempt_list"][0]["admitted_at"],
        timeout=10,
        what="admission to let the job start",
    )
    text = client.get("http://testserver/metrics").text
    assert 'trainfarm_jobs{status="queued"} 1.0' in text
    assert 'trainfarm_queue_depth{queue="cpu"} 1.0' in text
    assert "trainfarm_admission_decision_seconds_count" in text
    assert "trainfarm_http_request_seconds_bucket" in text


def test_openapi_and_dashboard_are_served(client):
    assert client.get("http://testserver/openapi.json").json()["info"]["title"] == "trainfarm"
    assert client.get("http://testserver/docs").status_code == 200
    assert "trainfarm" in client.get("http://testserver/").text


def test_published_marks_are_written_in_one_go_and_kept_through_a_database_error(settings):
    engine = make_engine(settings.database_url)
    init_db(engine)
    with Session(engine) as session:
        jobs = [Job(queue="cpu", spec=COMMAND) for _ in range(3)]
        session.add_all(jobs)
        session.flush()
        attempts = [JobAttempt(job_id=job.id, number=1) for job in jobs]
        session.add_all(attempts)
        session.commit()
        ids = [attempt.id for attempt in attempts]
    marks = PublishedMarks(engine)
    marks.add(ids[:2])
    assert marks.flush() == 2
    assert marks.flush() == 0

    # The database refuses (the table is away for a moment): the marks wait for the next flush.
    marks.add(ids[2:])
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE job_attempts RENAME TO job_attempts_away"))
    with pytest.raises(DBAPIError):
        marks.flush()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE job_attempts_away RENAME TO job_attempts"))
    assert marks.flush() == 1
    with Session(engine) as session:
        marked = {a.id: a.enqueued_at for a in session.exec(select(JobAttempt))}
    assert all(marked[i] is not None for i in ids)
    engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_health_names_a_failing_part_without_its_words(settings, caplog):
    # Anyone may call /api/health: a dead S3 is named, its address and error text are not.
    from shared.storage import ArtifactStore, make_s3_client
    from trainfarm.services.process import free_port

    with TestClient(create_app(settings), base_url="http://testserver/api") as client:
        # The fault: the master's store now points at a port nobody listens on.
        gone = settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{free_port()}"})
        client.app.state.master.store = ArtifactStore(make_s3_client(gone), settings.s3_bucket)  # type: ignore[attr-defined]
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and body["redis"] == "ok" and body["database"] == "ok"
    assert body["s3"].startswith("error: ") and "127.0.0.1" not in response.text
    assert any("health check of s3 failed" in r.getMessage() for r in caplog.records)
