"""A worker killed after it received a task message and before it leased the attempt takes the
message with it: on Redis it sits in the transport's unacknowledged set until the visibility
timeout (an hour here), on RabbitMQ it was acknowledged on receipt and is gone. The master sends
the attempt again once the worker's beat shows it dead (master/dead_workers.py), the job runs once,
and a copy older than the re-sent one is dropped (shared/message_copies.py). On both brokers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

from master.dispatch import make_publisher
from shared.celery_config import RUN_ATTEMPT_TASK
from shared.message_copies import newest_issued
from shared.schemas import JobSpec, TaskMessage
from shared.settings import Settings
from shared.signing import Signer
from tests.conftest import SIGNING_KEY, log_texts, wait_for, wait_status
from tests.rabbitmq_support import on_rabbitmq, rabbitmq_server
from tests.test_faults import kill_tree
from worker.filelock import FileLock

__all__ = ["rabbitmq_server"]  # the session fixture, imported so pytest finds it here

PY = sys.executable
#: The worker waits this long for a busy GPU, and the Redis transport gives an unacknowledged
#: message out again after this: both far beyond the test's wait, so only the re-send can save it.
OVERRIDES = {"gpus": "0", "placement_wait": 600.0, "broker_visibility_timeout": 3600}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'master.db'}"


@pytest.fixture(params=["redis", "rabbitmq"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    if request.param == "rabbitmq":
        return on_rabbitmq(settings, request.getfixturevalue("rabbitmq_server"))
    return settings


def test_a_message_lost_with_a_killed_worker_is_sent_again_and_runs_once(api, start_worker, settings):
    worker = start_worker("node-a", overrides=OVERRIDES)
    wait_for(lambda: api.get("/nodes").json(), timeout=30, what="the node to be seen")
    # Another process holds the node's one GPU, so the worker holds the message unleased, waiting.
    locks = worker.settings.job_work_dir / "gpu-locks"
    locks.mkdir(parents=True, exist_ok=True)
    gpu = FileLock(locks / "gpu-0.lock")
    assert gpu.try_acquire()
    spec = {"command": [PY, "-c", "print('ran', flush=True)"], "queue": "gpu", "devices": 1}
    job_id = api.post("/jobs", json=spec).json()["id"]
    # Past receipt and, on RabbitMQ, past the acknowledgement: the task itself waits for the GPU.
    wait_for(
        lambda: "1 GPUs busy here; waiting up to 600 s" in worker.log_path.read_text(errors="replace"),
        timeout=60,
        what="the worker to hold the message, waiting for the GPU",
    )
    kill_tree(worker.pid)  # type: ignore[arg-type]
    gpu.release()
    worker.start()  # the same node again, a new worker instance; the dead one's beat stays behind

    job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1  # never started before, so no attempt was used up
    assert log_texts(api, job_id).count("ran") == 1

    # The copy the killed worker had is older than the re-sent one: a worker drops it unread,
    # where the re-sent copy itself (sent once more, as a put-back does) meets the replay check.
    newest = newest_issued(redis.Redis.from_url(settings.redis_connection_url()), job_id, 1)
    assert newest is not None
    message = TaskMessage(job_id=job_id, attempt=1, spec=JobSpec.model_validate(job["spec"]))
    publisher = make_publisher(settings)
    for issued_at in (newest - 30, newest):
        signed = Signer(SIGNING_KEY).sign(message.model_copy(update={"issued_at": issued_at}))
        publisher.send_task(RUN_ATTEMPT_TASK, kwargs={"message": signed.model_dump()}, queue="gpu")
    text = lambda: worker.log_path.read_text(errors="replace")  # noqa: E731
    wait_for(lambda: f"job {job_id} attempt 1: an older copy of its message, dropped" in text(), timeout=30)
    wait_for(lambda: f"replayed: job {job_id} attempt 1" in text(), timeout=30, what="the live copy refused")
    assert log_texts(api, job_id).count("ran") == 1
