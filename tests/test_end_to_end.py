"""The whole path over real processes: HTTP submit, a Celery worker runs it, logs arrive live
over SSE, artifacts land in S3, the status ends right."""

from __future__ import annotations

import hashlib
import json
import sys

import httpx
import pytest
import redis

from shared.streams import log_key
from tests.conftest import DIGITS, DIGITS_RECIPE, upload_dataset, wait_for, wait_status

PY = sys.executable


def sse_events(
    api: httpx.Client, job_id: int, after: str | None = None, timeout: float = 120
) -> list[tuple[str, dict]]:
    """Read one SSE stream to its `end` event, returning (event, data) pairs."""
    events: list[tuple[str, dict]] = []
    params = {"after": after} if after else {}
    with api.stream("GET", f"/jobs/{job_id}/logs/stream", params=params, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line.removeprefix("data: "))))
                if name == "end":
                    return events
    raise AssertionError("stream closed without an end event")


def program_lines(events: list[tuple[str, dict]]) -> list[str]:
    lines = [text for name, data in events if name == "log" for text in data["lines"]]
    return [line for line in lines if not line.startswith("[trainfarm]")]


def test_command_job_streams_every_line_in_order(api, worker):
    count = 3000
    code = f"import time\nfor i in range({count}):\n    print(f'line {{i}}')\n    if i % 500 == 0: time.sleep(0.2)"
    job = api.post("/jobs", json={"command": [PY, "-c", code], "queue": "cpu", "name": "printer"})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert job.json()["status"] == "queued"

    events = sse_events(api, job_id)
    assert program_lines(events) == [f"line {i}" for i in range(count)]
    assert events[-1] == ("end", {"status": "succeeded"})

    detail = api.get(f"/jobs/{job_id}").json()
    assert detail["status"] == "succeeded"
    [attempt] = detail["attempt_list"]
    assert attempt["status"] == "succeeded" and attempt["exit_code"] == 0
    assert attempt["node"] == "node-1" and attempt["log_key"] == f"logs/{job_id}/attempt-1.log"


# The database plays no part here (worker, Redis and S3 do): once, on SQLite.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_logs_survive_a_redis_flush_via_the_s3_archive(api, worker, settings):
    code = "for i in range(500): print('row', i)"
    job_id = api.post("/jobs", json={"command": [PY, "-c", code], "queue": "cpu"}).json()["id"]
    wait_status(api, job_id, {"succeeded"})
    before = api.get(f"/jobs/{job_id}/logs", params={"limit": 10000}).json()
    redis.Redis.from_url(settings.redis_url).delete(log_key(job_id))
    after = api.get(f"/jobs/{job_id}/logs", params={"limit": 10000}).json()
    assert after == before
    assert [line["text"] for line in after["lines"] if not line["text"].startswith("[trainfarm]")] == [
        f"row {i}" for i in range(500)
    ]
    assert after["complete"] is True

    # Resuming from an offset returns exactly the rest.
    middle = before["lines"][100]
    rest = api.get(
        f"/jobs/{job_id}/logs", params={"after": f"{middle['attempt']}-{middle['line']}", "limit": 10000}
    )
    assert rest.json()["lines"] == before["lines"][101:]


def test_failing_command_fails_with_exit_code_and_log_tail(api, worker):
    code = "import sys; print('about to fail'); sys.exit(3)"
    job_id = api.post("/jobs", json={"command": [PY, "-c", code], "queue": "cpu", "max_retries": 0}).json()[
        "id"
    ]
    job = wait_status(api, job_id, {"failed", "succeeded"})
    assert job["status"] == "failed"
    assert "exited with code 3" in job["error"]
    assert "about to fail" in job["log_tail"]
    assert api.get(f"/jobs/{job_id}").json()["attempt_list"][0]["exit_code"] == 3


def test_tabular_recipe_trains_and_uploads_model(api, worker, settings):
    upload_dataset(api, DIGITS)
    spec = {**DIGITS_RECIPE, "max_epochs": 3}
    job_id = api.post("/jobs", json=spec).json()["id"]
    events = sse_events(api, job_id, timeout=240)
    assert events[-1] == ("end", {"status": "succeeded"}), api.get(f"/jobs/{job_id}").json()["attempt_list"]
    log_text = "\n".join(program_lines(events))
    assert "val_acc" in log_text

    job = api.get(f"/jobs/{job_id}").json()
    assert job["progress"]["epoch"] >= 2 and job["progress"]["max_epochs"] == 3
    assert job["metrics"]["val_acc"] > 0.8

    artifacts = {a["name"]: a for a in api.get(f"/jobs/{job_id}/artifacts").json()}
    assert {"model.pt", "metrics.json"} <= set(artifacts)
    assert any(name.startswith("checkpoints/") for name in artifacts)
    download = api.get(f"/jobs/{job_id}/artifacts/metrics.json")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == artifacts["metrics.json"]["sha256"]
    assert json.loads(download.content)["val_acc"] == job["metrics"]["val_acc"]

    history = api.get(f"/jobs/{job_id}/metrics").json()
    epochs = [m["epoch"] for m in history if m["kind"] == "metrics"]
    assert epochs == sorted(epochs) and len(epochs) >= 3


# The database plays no part here (worker, Redis and S3 do): once, on SQLite.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_second_job_on_same_dataset_downloads_nothing(api, worker):
    upload_dataset(api, DIGITS)
    code = "import os; print(sorted(os.listdir(os.environ['TRAINFARM_DATA_DIR'])))"
    spec = {"command": [PY, "-c", code], "datasets": ["digits.csv"], "queue": "cpu"}
    infos = []
    for _ in range(2):
        job_id = api.post("/jobs", json=spec).json()["id"]
        wait_status(api, job_id, {"succeeded"})
        infos.append(api.get(f"/jobs/{job_id}").json()["attempt_list"][0]["info"]["datasets"])
        lines = [line["text"] for line in api.get(f"/jobs/{job_id}/logs").json()["lines"]]
        assert "['digits.csv']" in lines
    assert infos[0] == [{"name": "digits.csv", "cached": False, "size": DIGITS.stat().st_size}]
    assert infos[1] == [{"name": "digits.csv", "cached": True, "size": DIGITS.stat().st_size}]


# The database plays no part here (worker, Redis and S3 do): once, on SQLite.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_node_registers_with_heartbeat(api, worker):
    nodes = wait_for(lambda: api.get("/nodes").json(), timeout=30, what="a node")
    [node] = nodes
    assert node["name"] == "node-1" and node["online"] is True
    assert sorted(node["queues"]) == ["cpu", "gpu"]
    assert node["info"]["cpu_count"] >= 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_two_device_job_trains_with_ddp_through_the_worker(api, worker):
    upload_dataset(api, DIGITS)
    spec = {**DIGITS_RECIPE, "max_epochs": 2, "devices": 2}
    job_id = api.post("/jobs", json=spec).json()["id"]
    events = sse_events(api, job_id, timeout=240)
    lines = program_lines(events)
    assert events[-1] == ("end", {"status": "succeeded"}), "\n".join(lines[-30:])
    assert any("world_size=2" in line for line in lines)
    # Only rank 0 reports: one metrics event per epoch, one model.
    history = api.get(f"/jobs/{job_id}/metrics").json()
    assert [m["epoch"] for m in history if m["kind"] == "metrics"] == [1, 2]
    assert "model.pt" in {a["name"] for a in api.get(f"/jobs/{job_id}/artifacts").json()}
