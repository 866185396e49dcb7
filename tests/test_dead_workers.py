"""The rules behind re-sending what a dead worker may have taken, without Redis or a database:
which queues a dead worker's beat bounds, in which clock, and which copy of a message is stale."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from master.dead_workers import in_master_clock, taken_before
from master.nodes import parse_beat
from shared.message_copies import is_stale


def beat(ts: float, queues: object) -> dict:
    return {"ts": ts, "queues": queues}


def test_only_dead_workers_bound_their_queues_each_by_its_newest_death():
    beats = [
        beat(100.0, ["gpu"]),  # dead: silent 100 s
        beat(150.0, ["gpu", "cpu", 7]),  # dead later: its bound wins for gpu; 7 names no queue
        beat(195.0, ["gpu", "big"]),  # alive: silent 5 s of 15
        beat(10.0, "gpu"),  # queues not a list: names nothing
    ]
    assert taken_before(beats, redis_now=200.0, offline_after=15.0) == {"gpu": 165.0, "cpu": 165.0}


def test_a_worker_exactly_at_the_offline_limit_is_still_alive():
    assert taken_before([beat(185.0, ["gpu"])], redis_now=200.0, offline_after=15.0) == {}
    assert taken_before([beat(184.9, ["gpu"])], 200.0, 15.0) == {"gpu": 199.9}


def test_unreadable_beats_never_reach_the_rule():
    """What the sweep parses with: NaN and infinite times (json.loads takes both), no time, not
    JSON. Were one taken for a dead worker, the bound's datetime would raise every sweep round."""
    for raw in (
        b'{"ts": NaN, "queues": ["gpu"]}',
        b'{"ts": -Infinity}',
        b'{"queues": ["cpu"]}',
        b"{not json",
    ):
        assert parse_beat("w#1", raw) is None, raw
    parsed = parse_beat("w#1", json.dumps({"ts": 100.0, "queues": ["gpu"]}).encode())
    assert parsed is not None and not math.isnan(parsed["ts"])


def test_bounds_move_to_the_masters_clock():
    # Redis's clock 30 s behind the master's: a death at Redis time 1000 is master time 1030.
    [(queue, when)] = in_master_clock({"gpu": 1000.0}, redis_now=2000.0, master_now=2030.0).items()
    assert (queue, when) == ("gpu", datetime.fromtimestamp(1030.0, UTC))
    assert in_master_clock({"cpu": 1000.0}, 2000.0, 1990.0)["cpu"] == datetime.fromtimestamp(990.0, UTC)


def test_a_copy_is_stale_only_when_a_later_one_was_marked():
    assert not is_stale(100.0, None)  # never re-sent: the first copy is the live one
    assert not is_stale(100.0, 100.0)
    assert not is_stale(100.0, 100.0005)  # the same copy, its time through text and back
    assert is_stale(100.0, 101.0)
    assert not is_stale(101.0, 100.0)  # newer than the mark (a put-back keeps its own time)
