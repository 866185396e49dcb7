"""RabbitMQ as the Celery broker, with a real master and real workers: what works on Redis works
here (dispatch, priorities, cancel, leases against redelivery, hand-back, put-back, fair-share
admission), and a job longer than the broker's consumer_timeout runs once, to success.

The suite's RabbitMQ has a consumer_timeout of seconds (tests/rabbitmq_support.py), so every job
here that runs longer would meet the trap if a delivery stayed unacknowledged while it ran.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import amqp
import pytest
import redis
from celery import Celery

from master.dispatch import make_publisher
from shared.celery_config import RUN_ATTEMPT_TASK, celery_config
from shared.redaction import with_password
from shared.schemas import JobSpec, TaskMessage
from shared.settings import Settings
from shared.signing import Signer
from shared.streams import NODES_KEY
from tests.conftest import SIGNING_KEY, log_texts, ticking_job, wait_for, wait_status
from tests.fairshare_support import held_job, make_member, set_limits
from tests.rabbitmq_support import (
    CONSUMER_TIMEOUT_MS,
    database_url,
    rabbitmq_server,
    settings,
    waiting_task_ids,
)
from tests.test_api import FRESH_FOR, beat_as_a_worker
from trainfarm.services.rabbitmq import RabbitMQServer
from trainfarm.services.tls import make_certificates

__all__ = ["database_url", "rabbitmq_server", "settings"]  # fixtures, imported so pytest finds them here

PY = sys.executable

#: Holds its GPU a while and says which one it was given.
SHOW_GPU = [PY, "-c", "import os, time; print('GPUS=' + os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(2)"]


def pids(api, job_id: int) -> int:
    return sum(text.startswith("pid ") for text in log_texts(api, job_id))


def test_the_broker_closes_a_channel_left_unacknowledged(rabbitmq_server: RabbitMQServer):
    """The trap is real on the suite's broker: without this, the tests below would prove nothing."""
    with rabbitmq_server.connection() as connection:
        channel = connection.default_channel
        channel.queue_declare("trap-check", durable=False, auto_delete=False)
        channel.basic_publish(amqp.Message("held"), routing_key="trap-check")
        assert channel.basic_get("trap-check", no_ack=False) is not None
        deadline = time.monotonic() + CONSUMER_TIMEOUT_MS / 1000 + 30
        with pytest.raises(amqp.exceptions.PreconditionFailed, match="timed out"):
            while time.monotonic() < deadline:  # the broker's channel.close arrives as an event
                try:
                    connection.drain_events(timeout=1)
                except TimeoutError:
                    continue
    rabbitmq_server.delete_queues(["trap-check"])


def test_jobs_run_put_back_and_cancel_over_rabbitmq(api, start_worker, settings, rabbitmq_server):
    worker = start_worker("gpu-box", overrides={"gpus": "0", "placement_wait": 0.5}, concurrency=2)
    # A second one-GPU node that only beats: admission sends two one-GPU jobs, both reach gpu-box,
    # and the second is put back (at its priority) until the first lets go of the GPU.
    broker = redis.Redis.from_url(settings.redis_connection_url())
    seconds, micros = broker.time()
    # Dated ahead: it never goes stale, which would read as a worker that died (tests/test_api.py).
    ghost = {"ts": seconds + micros / 1e6 + FRESH_FOR, "queues": ["gpu"], "concurrency": 1, "gpu_slots": [0]}
    broker.hset(NODES_KEY, "ghost#1", json.dumps({**ghost, "worker": "ghost#1"}))
    jobs = [api.post("/jobs", json={"command": SHOW_GPU, "priority": 6}).json()["id"] for _ in range(2)]
    done = {job: wait_status(api, job, {"succeeded", "failed"}, timeout=90) for job in jobs}
    assert {job["status"] for job in done.values()} == {"succeeded"}, done
    assert all(job["attempts"] == 1 for job in done.values())  # waiting cost no attempt
    assert "1 GPUs not free here, back on the queue" in worker.log_path.read_text()
    # The messages went through RabbitMQ (its durable queue exists), none through Redis lists.
    with rabbitmq_server.connection() as connection:
        assert connection.default_channel.queue_declare("gpu", passive=True).message_count == 0
    assert not broker.exists("gpu", "cpu") and not broker.keys("_kombu*")

    running = api.post("/jobs", json={"command": [PY, "-c", ticking_job(600, 0.1)], "queue": "cpu"}).json()
    wait_for(lambda: "tick 3" in log_texts(api, running["id"]), timeout=60, what="the job to tick")
    assert api.post(f"/jobs/{running['id']}/cancel").json()["cancel_requested"] is True
    assert (
        wait_status(api, running["id"], {"cancelled", "failed", "succeeded"}, timeout=30)["status"]
        == "cancelled"
    )


def test_a_job_longer_than_the_consumer_timeout_runs_once(api, worker):
    seconds = 2.5 * CONSUMER_TIMEOUT_MS / 1000
    job = api.post("/jobs", json={"command": [PY, "-c", ticking_job(int(seconds * 10), 0.1)], "queue": "cpu"})
    job = wait_status(api, job.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and pids(api, job["id"]) == 1
    ticks = [t for t in log_texts(api, job["id"]) if t.startswith("tick ")]
    assert ticks == [f"tick {i}" for i in range(int(seconds * 10))]
    # Nothing came back to the worker: it never lost its channel to the timeout.
    log = worker.log_path.read_text()
    assert "PRECONDITION_FAILED" not in log and "duplicate dropped" not in log


def test_priorities_order_the_waiting_messages(api, settings, rabbitmq_server):
    # A heartbeat as of a worker with three slots, and no worker: the messages stay queued.
    beat_as_a_worker(redis.Redis.from_url(settings.redis_connection_url()), ["gpu"], concurrency=3)
    ids = {}
    for priority in (1, 9, 5):
        ids[priority] = api.post("/jobs", json={"command": ["true"], "priority": priority}).json()["id"]
        wait_for(lambda p=priority: api.get(f"/jobs/{ids[p]}").json()["attempt_list"][0]["enqueued_at"])
    order = [f"job-{ids[p]}-attempt-1" for p in (9, 5, 1)]
    assert waiting_task_ids(rabbitmq_server, "gpu") == order


def test_copies_of_a_message_run_nothing_and_a_stopping_worker_hands_back(
    api, start_worker, settings, tmp_path
):
    leaving = start_worker("node-a")
    job = api.post("/jobs", json={"command": [PY, "-c", ticking_job(3000, 0.1)], "queue": "cpu"}).json()
    wait_for(lambda: "tick 3" in log_texts(api, job["id"]), timeout=60, what="the attempt to be running")
    staying = start_worker("node-b")
    # Genuine copies of the running attempt's message, as a redelivery would bring them.
    message = TaskMessage(job_id=job["id"], attempt=1, spec=JobSpec.model_validate(job["spec"]))
    publisher = make_publisher(settings)
    for _ in range(2):
        signed = Signer(SIGNING_KEY).sign(message.model_copy(update={"issued_at": time.time()}))
        publisher.send_task(RUN_ATTEMPT_TASK, kwargs={"message": signed.model_dump()}, queue="cpu")

    def dropped() -> int:
        return sum(p.log_path.read_text().count("duplicate dropped") for p in (leaving, staying))

    # node-a, busy, may hold one copy (messages are acknowledged as a process takes them); it goes
    # back to the queue at the consumer timeout, and node-b drops it too.
    wait_for(lambda: dropped() == 2, timeout=60, what="both copies dropped while the attempt runs")
    assert pids(api, job["id"]) == 1 and api.get(f"/jobs/{job['id']}").json()["status"] == "running"
    leaving.stop()  # SIGTERM: the attempt is handed back, and node-b takes it up
    resumed = wait_for(
        lambda: (
            (j := api.get(f"/jobs/{job['id']}").json())["attempts"] == 2 and j["status"] == "running" and j
        ),
        timeout=60,
        what="the second attempt to run",
    )
    first, second = resumed["attempt_list"]  # type: ignore[index]
    assert "handed back" in first["error"] and second["node"] == "node-b"
    wait_for(lambda: pids(api, job["id"]) == 2, timeout=30, what="the second attempt's process")
    api.post(f"/jobs/{job['id']}/cancel")


def test_fair_share_caps_admission_over_rabbitmq(api, start_worker, tmp_path: Path):
    alice = make_member(api, "alice")
    set_limits(api, "alice", "cpu", max_devices=1)
    start_worker("node-a", concurrency=2)
    release = tmp_path / "release"
    ids = [api.post("/jobs", json=held_job(release), headers=alice).json()["id"] for _ in range(2)]
    wait_status(api, ids[0], {"running"}, timeout=60)
    # A free slot, and still the second waits: alice's cap holds it back, unpublished.
    wait_for(
        lambda: (
            api.get(f"/jobs/{ids[1]}").json()["wait_reason"]
            == "waiting: alice already uses 1 of their 1 device on cpu"
        ),
        timeout=30,
        what="the second job to wait for alice's cap",
    )
    assert all(a["enqueued_at"] is None for a in api.get(f"/jobs/{ids[1]}").json()["attempt_list"])
    release.touch()
    assert wait_status(api, ids[1], {"succeeded"}, timeout=60)["attempts"] == 1


def test_the_config_keeps_redis_unchanged(settings: Settings):
    assert celery_config(settings)["task_acks_late"] is False
    redis_only = settings.model_copy(update={"broker_url": None})
    assert celery_config(redis_only)["task_acks_late"] is True
    assert celery_config(redis_only)["broker_url"] == settings.redis_connection_url()


def test_amqps_checks_the_server_and_the_password_comes_apart(tmp_path: Path):
    """TLS to a vhost of its own: the farm's settings connect only when the server's certificate
    is the CA's, and the password may live outside the URL (`broker_password`)."""
    certs, other = make_certificates(tmp_path / "tls"), make_certificates(tmp_path / "other")
    with RabbitMQServer(tmp_path / "rabbitmq-tls", tls=certs.server) as server:
        bare_url = with_password(server.url, "").replace(":@", "@")
        good = Settings(
            broker_url=bare_url, broker_password=server.password, broker_ca_file=certs.server.ca_file
        )
        publisher = Celery("tls-check", config_source=celery_config(good))
        with publisher.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
        publisher.send_task(RUN_ATTEMPT_TASK, kwargs={"message": {}}, queue="cpu")  # confirmed, or it raises
        with server.connection() as connection:
            assert connection.default_channel.queue_declare("cpu", passive=True).message_count == 1

        wrong = good.model_copy(update={"broker_ca_file": other.server.ca_file})
        refused = Celery("wrong-ca", config_source=celery_config(wrong)).connection_for_write()
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"), refused as connection:
            connection.ensure_connection(max_retries=0)
