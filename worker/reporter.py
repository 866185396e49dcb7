"""Publishing one attempt's events, numbered so the master applies each exactly once."""

from __future__ import annotations

import threading

import redis
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from shared.events import Event, EventData, envelope
from shared.streams import EventBus


class AttemptReporter:
    def __init__(self, bus: EventBus, job_id: int, attempt: int, node: str, worker: str = "") -> None:
        self._bus = bus
        self._job_id = job_id
        self._attempt = attempt
        self._node = node
        #: This worker's identity key, which the master checks against the attempt's worker.
        self._worker = worker
        self._seq = 0
        # One lock over numbering and publishing: stream order must equal sequence order.
        self._lock = threading.Lock()

    def report(self, data: EventData) -> None:
        """Number `data` as this attempt's next event and publish it."""
        with self._lock:
            self._seq += 1
            event = envelope(
                data,
                job_id=self._job_id,
                attempt=self._attempt,
                seq=self._seq,
                node=self._node,
                worker=self._worker,
            )
            self._publish(event)

    # Redis restarting or briefly unreachable must not lose an event: retry for up to ten minutes.
    @retry(
        retry=retry_if_exception_type(redis.ConnectionError),
        wait=wait_exponential_jitter(multiplier=0.2, max=10),
        stop=stop_after_delay(600),
        reraise=True,
    )
    def _publish(self, event: Event) -> None:
        self._bus.publish(event)
