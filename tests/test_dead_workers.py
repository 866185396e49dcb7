"""The rules behind re-sending what a dead worker may have taken, without Redis or a database:
which queues a dead worker's beat bounds, and which copy of a message is stale."""

from __future__ import annotations

import json

from master.dead_workers import taken_before
from shared.message_copies import is_stale


def beat(ts: float, queues: object) -> bytes:
    return json.dumps({"ts": ts, "queues": queues}).encode()


def test_only_dead_workers_bound_their_queues_each_by_its_newest_death():
    beats = {
        "a#1": beat(100.0, ["gpu"]),  # dead: silent 100 s
        "b#1": beat(150.0, ["gpu", "cpu"]),  # dead later: its bound wins for gpu
        "c#1": beat(195.0, ["gpu", "big"]),  # alive: silent 5 s of 15
        "d#1": b"not json",
        "e#1": json.dumps({"queues": ["cpu"]}).encode(),  # no time: unreadable, not dead
        "f#1": beat(10.0, "gpu"),  # queues not a list: names nothing
    }
    assert taken_before(beats.values(), redis_now=200.0, offline_after=15.0) == {"gpu": 165.0, "cpu": 165.0}


def test_a_worker_exactly_at_the_offline_limit_is_still_alive():
    assert taken_before([beat(185.0, ["gpu"])], redis_now=200.0, offline_after=15.0) == {}
    assert taken_before([beat(184.9, ["gpu"])], 200.0, 15.0) == {"gpu": 199.9}


def test_a_copy_is_stale_only_when_a_later_one_was_marked():
    assert not is_stale(100.0, None)  # never re-sent: the first copy is the live one
    assert not is_stale(100.0, 100.0)
    assert not is_stale(100.0, 100.0005)  # the same copy, its time through text and back
    assert is_stale(100.0, 101.0)
    assert not is_stale(101.0, 100.0)  # newer than the mark (a put-back keeps its own time)
