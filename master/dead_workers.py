"""Workers that died without a word, and which published messages they may have taken with them.

A worker that stops cleanly removes its heartbeat (worker/heartbeat.py `forget`); one killed (kill -9,
OOM, power) leaves it behind, ageing. Such a worker may have received a message and died before it
leased the attempt: the message is gone and nothing else notices, since the attempt never ran (the
reaper looks at running attempts only). So any attempt still waiting whose message went out to a
queue that worker consumed, before it died, is sent again (master/dispatch.py); copies are
harmless, the lease lets one run and workers drop the older (shared/message_copies.py).

A worker is judged dead `offline_after` seconds after its last beat, as the nodes view does, and
must have died by then: so `last beat + offline_after` bounds what it can have taken. An attempt
sent again is marked sent after that bound, which makes the rule fire once per death, restarts of
the master included.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import redis

from master.nodes import parse_beat, read_beats


def taken_before(
    beats: Iterable[Mapping[str, Any]], redis_now: float, offline_after: float
) -> dict[str, float]:
    """Per queue, the latest time (Redis clock) by which a dead worker consuming it had died: a
    message sent to that queue earlier may have gone down with it. `beats` are parsed
    (master/nodes.parse_beat: each has a float `ts`); live workers count for nothing."""
    bounds: dict[str, float] = {}
    for beat in beats:
        ts = beat["ts"]
        if redis_now - ts <= offline_after:
            continue
        listed = beat.get("queues")
        for queue in listed if isinstance(listed, list) else []:
            if isinstance(queue, str):
                bounds[queue] = max(bounds.get(queue, ts + offline_after), ts + offline_after)
    return bounds


def in_master_clock(bounds: Mapping[str, float], redis_now: float, master_now: float) -> dict[str, datetime]:
    """Bounds read in the Redis server's clock (beats carry its time) as times of the master's
    clock, which stamps attempts' `enqueued_at`: the two machines' clocks may differ."""
    offset = master_now - redis_now
    return {queue: datetime.fromtimestamp(bound + offset, UTC) for queue, bound in bounds.items()}


def read_taken_before(client: redis.Redis, offline_after: float) -> dict[str, datetime]:
    """`taken_before` of the workers' beats as they are in Redis, in the master's clock. An
    unreadable beat (NaN, not JSON) counts for nothing; the node sync logs it."""
    raw_beats, redis_now = read_beats(client)
    master_now = time.time()
    parsed = (parse_beat(key, raw) for key, raw in raw_beats.items())
    beats = [beat for beat in parsed if beat is not None]
    return in_master_clock(taken_before(beats, redis_now, offline_after), redis_now, master_now)
