"""The events consumer over a real Redis stream: a round whose commit fails (the database away or
locked, an injected fault) leaves its entries pending, and the next round applies them; nothing
waits for a master restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from master.events import EventConsumer
from master.models import Job, JobAttempt
from shared.events import Started, envelope
from shared.status import JobStatus
from shared.streams import EVENTS_GROUP, EVENTS_KEY, EventBus
from trainfarm.services import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


def test_a_round_whose_commit_fails_is_applied_by_the_next_round(engine: Engine, client: redis.Redis) -> None:
    with Session(engine) as session:
        job = Job(queue="cpu", spec={"command": ["true"], "queue": "cpu"})
        session.add(job)
        session.flush()
        assert job.id is not None
        job_id = job.id
        session.add(JobAttempt(job_id=job_id, number=1))
        session.commit()
    bus = EventBus(client)
    consumer = EventConsumer(bus, engine)
    assert consumer.poll(block_ms=10) == consumer.batch  # nothing pending: caught up
    bus.publish(envelope(Started(pid=1), job_id=job_id, attempt=1, seq=1, node="node-1"))

    failures = {"left": 1}

    def locked(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if failures["left"] and statement.lstrip().upper().startswith("UPDATE"):
            failures["left"] -= 1
            raise OperationalError(statement, parameters, Exception("database is locked"))

    # Before the write lock's own listener, so the fault comes first, as SQLite's would.
    event.listen(engine, "before_cursor_execute", locked, insert=True)
    with pytest.raises(OperationalError):
        consumer.poll(block_ms=100)
    assert client.xpending(EVENTS_KEY, EVENTS_GROUP)["pending"] == 1
    with Session(engine) as session:
        assert session.get(Job, job_id).status == JobStatus.QUEUED  # type: ignore[union-attr]

    # No new event arrives: only a re-read of the pending entry can apply it.
    assert consumer.poll(block_ms=100) == 1
    assert client.xpending(EVENTS_KEY, EVENTS_GROUP)["pending"] == 0
    with Session(engine) as session:
        assert session.get(Job, job_id).status == JobStatus.RUNNING  # type: ignore[union-attr]
