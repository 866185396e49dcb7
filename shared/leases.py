"""Attempt leases in Redis: at most one live run of an attempt, and a bounded time to notice a dead one.

A lease key moves through: absent (never started) -> held by a worker, with a TTL it keeps renewing
-> `done` (ended normally) or `lost` (the master saw it expire). A worker only starts an attempt it
can take from absent, so a redelivered message, a manual re-send, or a message restored after its
worker died never starts a second run, and an attempt the master has given up on never runs again.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

DONE = "done"
LOST = "lost"
#: Ended leases outlive any redelivery of their message.
ENDED_TTL_SECONDS = 14 * 86400

# Compare-and-act scripts: only the holder may renew or end its lease.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 2
end
return 0
"""
_END = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) and 1
end
return 0
"""


def lease_key(job_id: int, attempt: int) -> str:
    return f"tf:lease:{job_id}:{attempt}"


class Leases:
    def __init__(self, client: redis.Redis, ttl_seconds: float) -> None:
        self._redis = client
        self.ttl_ms = int(ttl_seconds * 1000)
        self._renew = client.register_script(_RENEW)
        self._end = client.register_script(_END)

    def acquire(self, job_id: int, attempt: int, holder: str) -> bool:
        return bool(self._redis.set(lease_key(job_id, attempt), holder, nx=True, px=self.ttl_ms))

    def renew(self, job_id: int, attempt: int, holder: str) -> bool:
        """Extend our lease; False when it is no longer ours (the master declared it lost).

        A lease that merely expired (Redis was away longer than the TTL) is taken back, since nobody
        else can have it: only absent leases are given out, and `lost` is written, never expired.
        """
        return bool(self._renew(keys=[lease_key(job_id, attempt)], args=[holder, self.ttl_ms]))

    def end(self, job_id: int, attempt: int, holder: str) -> bool:
        key = lease_key(job_id, attempt)
        return bool(self._end(keys=[key], args=[holder, DONE, ENDED_TTL_SECONDS]))

    def mark_lost(self, job_id: int, attempt: int) -> bool:
        """Fence off an expired attempt; False if its worker renewed it in the meantime."""
        return bool(self._redis.set(lease_key(job_id, attempt), LOST, nx=True, ex=ENDED_TTL_SECONDS))

    def ended(self, job_id: int, attempt: int) -> bool:
        """The attempt ran to its end (`done`) or was given up on (`lost`): a message for it now is
        a replay, not a redelivery of a live one."""
        value = self._redis.get(lease_key(job_id, attempt))
        return isinstance(value, bytes) and value.decode() in (DONE, LOST)

    def present(self, attempts: Sequence[tuple[int, int]]) -> list[bool]:
        return leases_present(self._redis, attempts)


def leases_present(client: redis.Redis, attempts: Sequence[tuple[int, int]]) -> list[bool]:
    """Whether each attempt has a lease (held, ended or lost), in one round trip; for a reader that
    takes none and so needs no TTL."""
    pipe = client.pipeline(transaction=False)
    for job_id, attempt in attempts:
        pipe.exists(lease_key(job_id, attempt))
    return [bool(n) for n in pipe.execute()]
