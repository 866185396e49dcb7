"""Copying worker heartbeats from Redis into the nodes table, and judging who is online."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import Engine
from sqlmodel import Session

from master.models import Node, NodePublic, utcnow
from shared.streams import NODES_KEY


def sync_nodes(broker: redis.Redis, engine: Engine) -> int:
    """Workers write their state into one Redis hash; the master keeps the history in SQL."""
    beats = broker.hgetall(NODES_KEY)
    with Session(engine) as session:
        for raw_name, raw in beats.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            beat = json.loads(raw)
            seen = datetime.fromtimestamp(beat["ts"], UTC)
            node = session.get(Node, name) or Node(name=name, first_seen=seen)
            if node.last_seen is not None and node.last_seen > seen and node.info:
                continue
            node.queues, node.info, node.last_seen = beat.get("queues", []), beat, seen
            session.add(node)
        session.commit()
    return len(beats)


def to_public(node: Node, offline_after: float) -> NodePublic:
    online = utcnow() - node.last_seen < timedelta(seconds=offline_after)
    return NodePublic.model_validate(node, update={"online": online})
