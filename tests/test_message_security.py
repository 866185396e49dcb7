"""Only the master makes a node run code: forged, tampered, foreign and replayed task messages pushed
straight into the farm's real Redis (with its password) are refused, counted and never run, and
events about an attempt from a worker other than its holder are ignored."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import httpx
import pytest

from master.dispatch import make_publisher
from shared.celery_config import RUN_ATTEMPT_TASK
from shared.events import Metrics, envelope
from shared.redis_client import make_redis
from shared.schemas import JobSpec, TaskMessage
from shared.signing import Signer, new_private_key
from shared.streams import EventBus
from tests.conftest import SIGNING_KEY, wait_for, wait_status
from trainfarm.services.farm import MasterProcess, WorkerProcess

PY = sys.executable
#: What is checked here happens on the workers and in Redis; the database backend changes nothing.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _metric(master: MasterProcess, name: str, labels: str = "") -> float:
    text = httpx.get(f"{master.url}/metrics", headers={"Authorization": f"Bearer {master.token}"}).text
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _refused(master: MasterProcess, reason: str) -> float:
    return _metric(master, "trainfarm_messages_refused_total", f'{{reason="{reason}"}}')


def _touch(folder: Path, name: str) -> list[str]:
    return [PY, "-c", f"open({str(folder / name)!r}, 'w').close()"]


@sqlite_only
def test_forged_tampered_foreign_and_replayed_messages_never_run(api, master, worker, settings, tmp_path):
    ran = tmp_path / "ran"
    ran.mkdir()
    publisher = make_publisher(settings)  # the farm's own broker settings: URL, password and all

    def push(kwargs: dict, task_id: str) -> None:
        publisher.send_task(RUN_ATTEMPT_TASK, kwargs=kwargs, queue="cpu", task_id=task_id)

    def message(job_id: int, name: str) -> TaskMessage:
        return TaskMessage(job_id=job_id, attempt=1, spec=JobSpec(command=_touch(ran, name), queue="cpu"))

    # Unsigned, in the shape masters sent before signing, for a job that does not exist.
    push({"message": message(990_001, "forged").model_dump(mode="json")}, "forged")
    # Signed, but by a key that is not the master's.
    push({"message": Signer(new_private_key()).sign(message(990_002, "other")).model_dump()}, "other")
    # The master's signature over a command, with the command changed afterwards.
    genuine = Signer(SIGNING_KEY).sign(message(990_003, "genuine"))
    payload = json.loads(genuine.payload)
    payload["spec"]["command"] = _touch(ran, "tampered")
    push({"message": genuine.model_copy(update={"payload": json.dumps(payload)}).model_dump()}, "tampered")
    # No keyword at all: still met by the check, not by a TypeError inside Celery.
    publisher.send_task(RUN_ATTEMPT_TASK, args=["rm -rf /"], queue="cpu", task_id="positional")

    wait_for(lambda: _refused(master, "unsigned") >= 2, 60, what="two unsigned messages refused")
    wait_for(lambda: _refused(master, "other_key") >= 1, 30, what="the foreign key refused")
    wait_for(lambda: _refused(master, "bad_signature") >= 1, 30, what="the tampered message refused")

    # The same worker still runs what the master signs.
    job = api.post("/jobs", json={"command": _touch(ran, "real"), "queue": "cpu"})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    detail = wait_status(api, job_id, {"succeeded"}, timeout=60)
    assert sorted(p.name for p in ran.iterdir()) == ["real"]

    # A copy of that job's message, pushed again once the attempt has run, is a replay.
    (ran / "real").unlink()
    again = TaskMessage(job_id=job_id, attempt=1, spec=JobSpec.model_validate(detail["spec"]))
    push({"message": Signer(SIGNING_KEY).sign(again).model_dump()}, "replayed")
    wait_for(lambda: _refused(master, "replayed") >= 1, 30, what="the replay refused")
    assert list(ran.iterdir()) == []
    after = api.get(f"/jobs/{job_id}").json()
    assert after["status"] == "succeeded" and after["attempts"] == 1

    # Events: the attempt is its worker's; the same event from anyone else is ignored.
    [attempt] = after["attempt_list"]
    holder = attempt["worker"]
    assert holder and holder.startswith("node-1#")
    client = make_redis(settings)
    bus = EventBus(client)
    where = {"job_id": job_id, "attempt": 1, "node": "node-1"}
    bus.publish(envelope(Metrics(metrics={"forged": 1.0}), seq=10_000, worker="node-1#intruder", **where))
    wait_for(lambda: _metric(master, "trainfarm_events_refused_total") >= 1, 30, what="the event ignored")
    bus.publish(envelope(Metrics(metrics={"own": 1.0}), seq=10_001, worker=holder, **where))
    wait_for(lambda: "own" in api.get(f"/jobs/{job_id}").json()["metrics"], 30, what="the holder's event")
    assert "forged" not in api.get(f"/jobs/{job_id}").json()["metrics"]
    client.close()


@sqlite_only
def test_a_worker_without_the_masters_public_key_does_not_start(settings, tmp_path):
    lonely = settings.model_copy(update={"signing_public_key": None, "data_dir": tmp_path / "nowhere"})
    proc = WorkerProcess(tmp_path / "w", lonely, node_name="keyless")
    with pytest.raises(RuntimeError):
        proc.start()
    assert "TRAINFARM_SIGNING_PUBLIC_KEY" in proc.log_path.read_text()
    proc.stop()
