"""Keeping an attempt's lease alive for as long as the worker works on it."""

from __future__ import annotations

import logging
import threading

import redis

from shared.leases import Leases

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Renews the lease every third of its TTL, through downloads, training and uploads alike.

    `lost` is set when the lease turns out not to be ours any more: the master declared the attempt
    lost (this worker was unreachable for too long) and a new attempt may already run elsewhere.
    """

    def __init__(self, leases: Leases, job_id: int, attempt: int, holder: str) -> None:
        super().__init__(name=f"lease-{job_id}-{attempt}", daemon=True)
        self._leases = leases
        self._job_id, self._attempt, self._holder = job_id, attempt, holder
        self._halt = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        interval = self._leases.ttl_ms / 3000
        while not self._halt.wait(interval):
            try:
                if not self._leases.renew(self._job_id, self._attempt, self._holder):
                    log.error("job %s attempt %s: lease lost", self._job_id, self._attempt)
                    self.lost.set()
                    return
            except redis.RedisError as exc:  # Redis away: try again next round, the TTL gives slack
                log.warning("lease renewal failed: %s", exc)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
