"""Which copy of an attempt's task message is the live one.

The master sends an attempt's message again when the first may be gone: never marked as sent, about
to expire, or taken by a worker that died before it took the attempt's lease (a worker killed
between receiving a message and leasing its attempt takes the message with it: the Redis transport
restores it only after its visibility timeout, RabbitMQ not at all once acknowledged). The old copy
may still exist after all, waiting in the queue or bouncing between busy nodes. The lease would let
only one of them run, but a bounced copy would go on taking a worker's placement wait for nothing;
so each re-send records its `issued_at` here, and a worker drops any copy issued before it.

Written after the new copy is sent, never before: a re-send that fails must not make the old copy,
perhaps the only one, stale.
"""

from __future__ import annotations

import redis

#: Copies issued within this of the newest count as it (the float goes through text and back).
SAME_COPY_SECONDS = 1e-3


def newest_copy_key(job_id: int, attempt: int) -> str:
    return f"tf:copy:{job_id}:{attempt}"


def record_newest(client: redis.Redis, job_id: int, attempt: int, issued_at: float, ttl_seconds: int) -> None:
    """Mark the copy issued at `issued_at` as the live one; older ones are stale from now on. The mark
    outlives every copy: a worker refuses any message older than `message_max_age` anyway."""
    client.set(newest_copy_key(job_id, attempt), repr(issued_at), ex=ttl_seconds)


def is_stale(issued_at: float, newest: float | None) -> bool:
    """Whether a copy issued at `issued_at` was replaced by the one issued at `newest`."""
    return newest is not None and issued_at < newest - SAME_COPY_SECONDS


def newest_issued(client: redis.Redis, job_id: int, attempt: int) -> float | None:
    """When the live copy was issued, or None when the first copy was never replaced (or the mark
    is unreadable: then no copy is called stale, and the lease still decides)."""
    return parse_mark(client.get(newest_copy_key(job_id, attempt)))


def parse_mark(raw: object) -> float | None:
    """A mark as Redis gives it back (bytes, or None when there is none)."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        return float(raw)
    except ValueError:
        return None
