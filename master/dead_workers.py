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

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import redis

from master.nodes import read_beats


def taken_before(beats: Iterable[bytes], redis_now: float, offline_after: float) -> dict[str, float]:
    """Per queue, the latest time (Redis clock) by which a dead worker consuming it had died: a
    message sent to that queue earlier may have gone down with it. Live workers, and beats that are
    unreadable (master/nodes.py logs those), count for nothing."""
    bounds: dict[str, float] = {}
    for raw in beats:
        try:
            beat = json.loads(raw)
            ts = float(beat["ts"])
            listed = beat.get("queues")
            queues = [q for q in listed if isinstance(q, str)] if isinstance(listed, list) else []
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if redis_now - ts <= offline_after:
            continue
        for queue in queues:
            bounds[queue] = max(bounds.get(queue, ts + offline_after), ts + offline_after)
    return bounds


def read_taken_before(client: redis.Redis, offline_after: float) -> dict[str, datetime]:
    """`taken_before` of the workers' beats as they are in Redis, in the master's clock: beats carry
    the Redis server's time, attempts' `enqueued_at` the master's."""
    beats, redis_now = read_beats(client)
    offset = time.time() - redis_now
    return {
        queue: datetime.fromtimestamp(bound + offset, UTC)
        for queue, bound in taken_before(beats.values(), redis_now, offline_after).items()
    }
