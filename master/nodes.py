"""Copying worker heartbeats from Redis into the nodes table, and judging who is online.

A beat's `ts` is read from the Redis server's clock (see `worker.heartbeat`); the sync converts it to
the master's clock, so a node is judged by how long it has been silent, whatever its own clock says.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Engine
from sqlmodel import Session

from master.models import Node, NodePublic, utcnow
from shared.streams import NODES_KEY

log = logging.getLogger(__name__)
#: The last unreadable beat logged per node: the sync runs every few seconds and would repeat it.
_logged_bad: dict[str, bytes] = {}


def sync_nodes(broker: redis.Redis, engine: Engine) -> int:
    """Workers write their state into one Redis hash; the master keeps the history in SQL."""
    pipe = broker.pipeline(transaction=False)
    pipe.hgetall(NODES_KEY)
    pipe.time()
    beats, (seconds, micros) = pipe.execute()
    # Master clock minus Redis clock.
    offset = time.time() - (seconds + micros / 1e6)
    with Session(engine) as session:
        for raw_name, raw in beats.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            beat = _parse(name, raw)
            if beat is None:
                continue
            seen = datetime.fromtimestamp(beat["ts"] + offset, UTC)
            node = session.get(Node, name) or Node(name=name, first_seen=seen)
            if node.info and beat["ts"] == node.info.get("ts"):
                continue  # no beat since the last sync: the node has been silent
            node.queues, node.info, node.last_seen = beat.get("queues") or [], beat, seen
            session.add(node)
        session.commit()
    return len(beats)


def _parse(name: str, raw: bytes) -> dict[str, Any] | None:
    try:
        beat = json.loads(raw)
        beat["ts"] = float(beat["ts"])
        datetime.fromtimestamp(beat["ts"], UTC)  # NaN, infinity, year 10000: not a time
    except (ValueError, TypeError, KeyError, OverflowError, OSError):
        if _logged_bad.get(name) != raw:
            _logged_bad[name] = raw
            log.warning("ignoring an unreadable heartbeat of node %s: %r", name, raw[:200])
        return None
    return beat


def to_public(node: Node, offline_after: float) -> NodePublic:
    """The node with `online`: it has beaten within the last `offline_after` seconds."""
    last_seen = node.last_seen
    if last_seen.tzinfo is None:  # SQLite keeps no zone; the master writes UTC
        last_seen = last_seen.replace(tzinfo=UTC)
    online = utcnow() - last_seen < timedelta(seconds=offline_after)
    return NodePublic(
        name=node.name,
        queues=node.queues if isinstance(node.queues, list) else [],
        info=node.info if isinstance(node.info, dict) else {},
        first_seen=node.first_seen,
        last_seen=last_seen,
        online=online,
    )
