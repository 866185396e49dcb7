"""The dispatcher's sweep against a real Redis: admitted attempts never published are sent, one still
queued long after its message went out is sent again, freshly signed, before workers would refuse
the old copy as expired, and attempts admission has not let start are left to it."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
import redis
from sqlmodel import Session

from master.dispatch import Dispatcher, make_publisher
from master.models import Job, JobAttempt, utcnow
from master.published_marks import PublishedMarks
from shared.settings import Settings
from shared.signing import Signer, Verifier
from tests.conftest import SIGNING_KEY

MAX_AGE = 14 * 86400.0


def _queued(session: Session, published_days_ago: float | None, admitted: bool = True) -> int:
    job = Job(queue="cpu", spec={"command": ["true"], "queue": "cpu"})
    session.add(job)
    session.flush()
    assert job.id is not None
    enqueued = None if published_days_ago is None else utcnow() - timedelta(days=published_days_ago)
    created = utcnow() - timedelta(days=published_days_ago or 1)
    session.add(
        JobAttempt(
            job_id=job.id,
            number=1,
            enqueued_at=enqueued,
            created_at=created,
            admitted_at=created if admitted else None,
        )
    )
    session.commit()
    return job.id


def _sent(client: redis.Redis) -> list[int]:
    """Job ids of the messages waiting on the cpu queue (every priority list), as workers verify them."""
    verifier = Verifier(SIGNING_KEY.public_key(), MAX_AGE)
    ids = []
    for key in ["cpu"] + [f"cpu:{p}" for p in range(1, 10)]:
        for raw in client.lrange(key, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            ids.append(verifier.verify(body[1]["message"]).job_id)
    return sorted(ids)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sweep_sends_unpublished_attempts_and_refreshes_old_ones(settings: Settings, engine) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    dispatcher = Dispatcher(make_publisher(settings), PublishedMarks(engine), Signer(SIGNING_KEY), MAX_AGE)
    with Session(engine) as session:
        never = _queued(session, None)
        stale = _queued(session, 8)  # past half the message's life: sent again
        recent = _queued(session, 1)  # its message is fine: left alone
        waiting = _queued(session, None, admitted=False)  # admission's to send, when it may start
        assert dispatcher.sweep(session) == 2
    assert _sent(client) == sorted([never, stale])
    with Session(engine) as session:
        # Marked sent now, so the next sweep leaves both alone.
        assert dispatcher.sweep(session) == 0
        attempt = session.get(JobAttempt, 2)
        assert attempt is not None and attempt.enqueued_at is not None
        assert utcnow() - attempt.enqueued_at.replace(tzinfo=utcnow().tzinfo) < timedelta(minutes=1)
    assert recent not in _sent(client) and waiting not in _sent(client)
    client.close()
