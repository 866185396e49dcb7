"""The dispatcher's sweep against a real Redis: admitted attempts never published are sent, one still
queued long after its message went out is sent again, freshly signed, before workers would refuse
the old copy as expired, and attempts admission has not let start are left to it."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import pytest
import redis
from sqlmodel import Session

from master.dispatch import Dispatcher, make_publisher
from master.models import Job, JobAttempt, utcnow
from master.published_marks import PublishedMarks
from shared.leases import lease_key
from shared.message_copies import newest_issued, record_newest
from shared.settings import Settings
from shared.signing import Signer, Verifier
from shared.streams import NODES_KEY
from tests.conftest import SIGNING_KEY

MAX_AGE = 14 * 86400.0


def _queued(
    session: Session, published_days_ago: float | None, admitted: bool = True, queue: str = "cpu"
) -> int:
    job = Job(queue=queue, spec={"command": ["true"], "queue": queue})
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


def _messages(client: redis.Redis, queue: str = "cpu") -> list[tuple[int, float]]:
    """(job id, issued at) of the messages waiting on a queue (every priority list), as workers
    verify them."""
    verifier = Verifier(SIGNING_KEY.public_key(), MAX_AGE)
    found = []
    for key in [queue] + [f"{queue}:{p}" for p in range(1, 10)]:
        for raw in client.lrange(key, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            message = verifier.verify(body[1]["message"])
            found.append((message.job_id, message.issued_at))
    return found


def _sent(client: redis.Redis, queue: str = "cpu") -> list[int]:
    return sorted(job_id for job_id, _ in _messages(client, queue))


def _beat(client: redis.Redis, worker: str, queues: list[str], seconds_ago: float) -> None:
    """A worker's beat as worker/heartbeat.py writes it, `seconds_ago` old by Redis's clock: a
    worker killed then (the fault) leaves it so."""
    seconds, micros = client.time()
    beat = {"ts": seconds + micros / 1e6 - seconds_ago, "queues": queues, "worker": worker}
    client.hset(NODES_KEY, worker, json.dumps(beat))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sweep_sends_unpublished_attempts_and_refreshes_old_ones(settings: Settings, engine) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    dispatcher = Dispatcher(
        make_publisher(settings), PublishedMarks(engine), Signer(SIGNING_KEY), MAX_AGE, client, 15.0
    )
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


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sweep_sends_again_what_a_dead_worker_may_have_taken(settings: Settings, engine) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    offline_after = 15.0
    dispatcher = Dispatcher(
        make_publisher(settings), PublishedMarks(engine), Signer(SIGNING_KEY), MAX_AGE, client, offline_after
    )
    with Session(engine) as session:
        before = _queued(session, 60 / 86400)  # sent a minute ago, to the queue the dead worker took from
        other_queue = _queued(session, 60 / 86400, queue="gpu")  # the dead worker did not serve gpu
        after = _queued(session, 1 / 86400)  # sent after the worker died: it cannot have it
        # A live worker on both queues changes nothing; one that died 30 s ago (last beat 30 s old,
        # so dead by 15 s ago) may have taken what went out to cpu before.
        _beat(client, "live#1", ["cpu", "gpu"], seconds_ago=1)
        _beat(client, "dead#1", ["cpu"], seconds_ago=30)
        sent_at = time.time()
        assert dispatcher.sweep(session) == 1
    [(job_id, issued_at)] = _messages(client)
    assert job_id == before and issued_at >= sent_at
    assert _sent(client, "gpu") == [] and after not in _sent(client) and other_queue not in _sent(client)
    # The new copy is the live one: workers drop any copy issued before it.
    newest = newest_issued(client, before, 1)
    assert newest is not None and abs(newest - issued_at) < 1e-3
    assert newest_issued(client, after, 1) is None
    with Session(engine) as session:
        # Once per death: the copy went out after the dead worker's end, so the next sweep, or a
        # restarted master's, leaves it alone while the dead worker's beat is still there.
        assert dispatcher.sweep(session) == 0
        restarted = Dispatcher(
            make_publisher(settings),
            PublishedMarks(engine),
            Signer(SIGNING_KEY),
            MAX_AGE,
            client,
            offline_after,
        )
        assert restarted.sweep(session) == 0
    assert len(_messages(client)) == 1
    client.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_leased_attempt_is_left_alone_and_a_copy_is_newer_than_the_live_one(settings: Settings, engine):
    client = redis.Redis.from_url(settings.redis_url)
    dispatcher = Dispatcher(
        make_publisher(settings), PublishedMarks(engine), Signer(SIGNING_KEY), MAX_AGE, client, 15.0
    )
    with Session(engine) as session:
        held = _queued(session, 60 / 86400)
        clock = _queued(session, 60 / 86400)
        _beat(client, "dead#1", ["cpu"], seconds_ago=30)
        # A worker took `held` and leases it: it is starting (its Started event not applied yet).
        client.set(lease_key(held, 1), "node-b:1:abc", px=15_000)
        # `clock` was sent again before, by a master whose clock ran 60 s ahead of this one's.
        ahead = time.time() + 60
        record_newest(client, clock, 1, ahead, 3600)
        assert dispatcher.sweep(session) == 1
        [(job_id, issued_at)] = _messages(client)
        # Newer than the live copy, so workers keep it and drop that one.
        assert job_id == clock and issued_at > ahead
        assert newest_issued(client, clock, 1) == pytest.approx(issued_at, abs=1e-3)

        # The lease holder died before it said it started: its lease expires, and the next round
        # sends the attempt, the dead worker's bound unchanged.
        client.delete(lease_key(held, 1))
        assert dispatcher.sweep(session) == 1
    assert _sent(client) == sorted([clock, held])
    client.close()
