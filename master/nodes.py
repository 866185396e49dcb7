"""Copying worker heartbeats from Redis into the nodes table, and judging who is online.

A beat's `ts` is read from the Redis server's clock (see `worker.heartbeat`); the sync converts it to
the master's clock, so a node is judged by how long it has been silent, whatever its own clock says.

Each worker beats under its own key (`node#instance`); several workers on one machine share its node
name, and the master keeps one row per node name whose `info` merges their beats (`merge_beats`),
with each worker's own part under `info["workers"]`. No table change: the row is the machine's.
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
from shared.streams import NODES_KEY, node_attempts_key, split_worker_key

log = logging.getLogger(__name__)
#: A worker's beat left in Redis this long (it was killed, never to come back) is removed, with its
#: running-attempts hash; the node's row keeps what it last said.
FORGET_AFTER_SECONDS = 24 * 3600
#: The last unreadable beat logged per node: the sync runs every few seconds and would repeat it.
_logged_bad: dict[str, bytes] = {}


def read_beats(broker: redis.Redis) -> tuple[dict[str, bytes], float]:
    """Every worker's beat as it is in Redis, by worker key, and the Redis server's time (its
    beats' clock)."""
    pipe = broker.pipeline(transaction=False)
    pipe.hgetall(NODES_KEY)
    pipe.time()
    beats, (seconds, micros) = pipe.execute()
    by_key = {(k.decode() if isinstance(k, bytes) else k): raw for k, raw in beats.items()}
    return by_key, seconds + micros / 1e6


def sync_nodes(broker: redis.Redis, engine: Engine, offline_after: float = 15.0) -> int:
    """Workers write their state into one Redis hash; the master keeps the history in SQL. A
    worker silent `offline_after` seconds longer than a sibling on its node no longer counts there."""
    beats, redis_now = read_beats(broker)
    # Master clock minus Redis clock.
    offset = time.time() - redis_now
    by_node: dict[str, list[dict[str, Any]]] = {}
    forgotten = []
    for key, raw in beats.items():
        beat = parse_beat(key, raw)
        if beat is None:
            continue
        if redis_now - beat["ts"] > FORGET_AFTER_SECONDS:
            forgotten.append(key)
        by_node.setdefault(split_worker_key(key)[0], []).append(beat)
    with Session(engine) as session:
        for name, group in by_node.items():
            newest = max(b["ts"] for b in group)
            beat = merge_beats([b for b in group if newest - b["ts"] < offline_after])
            seen = datetime.fromtimestamp(beat["ts"] + offset, UTC)
            node = session.get(Node, name) or Node(name=name, first_seen=seen)
            if node.info and beat["ts"] == node.info.get("ts"):
                continue  # no beat since the last sync: the node has been silent
            node.queues, node.info, node.last_seen = beat.get("queues") or [], beat, seen
            session.add(node)
        session.commit()
    if forgotten:
        pipe = broker.pipeline(transaction=False)
        pipe.hdel(NODES_KEY, *forgotten)
        pipe.delete(*(node_attempts_key(key) for key in forgotten))
        pipe.execute()
    return len(beats)


def merge_beats(beats: list[dict[str, Any]]) -> dict[str, Any]:
    """One node's state from the beats of its workers: the machine's own numbers (CPUs, memory,
    GPUs, versions) from the newest beat; queues, GPU slots, concurrency and running attempts of
    all workers together; `paused` only when every worker is (then why, each); and `workers`, the
    part of each beat that is that worker's own."""
    beats = sorted(beats, key=lambda b: b["ts"])
    merged = dict(beats[-1])
    pools = {b.get("pool") for b in beats}
    concurrencies = [c for b in beats if isinstance(c := b.get("concurrency"), int)]
    reasons = [b.get("paused") for b in beats]
    merged.update(
        queues=sorted({q for b in beats for q in _items(b.get("queues")) if isinstance(q, str)}),
        gpu_slots=sorted({g for b in beats for g in _items(b.get("gpu_slots")) if isinstance(g, int)}),
        running=sorted(
            (r for b in beats for r in _items(b.get("running")) if isinstance(r, dict)),
            key=lambda r: (_number(r.get("job_id")), _number(r.get("attempt"))),
        ),
        pool=pools.pop() if len(pools) == 1 else "mixed",
        concurrency=sum(concurrencies) if concurrencies else None,
        paused="; ".join(dict.fromkeys(str(r) for r in reasons)) if all(reasons) else None,
        workers=[{k: b.get(k) for k in WORKER_FIELDS} for b in beats],
    )
    return merged


#: What each worker of a node reports of itself (the rest is the machine's).
WORKER_FIELDS = (
    "worker",
    "instance",
    "pid",
    "started",
    "ts",
    "queues",
    "pool",
    "concurrency",
    "gpu_slots",
    "running",
    "paused",
)


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: object) -> int:
    return value if isinstance(value, int) else -1


def parse_beat(name: str, raw: bytes) -> dict[str, Any] | None:
    """One worker's beat, its `ts` a float that is a time; None (logged once per content) if not."""
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
