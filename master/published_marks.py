"""Recording, off the request path, that attempts were published to their queue.

A submission commits its job, publishes it, and answers; the `enqueued_at` marks are written a
moment later, many in one statement, by a loop. A mark lost with a crash of the master costs
nothing but a second message: the sweep publishes an attempt left unmarked after `SWEEP_GRACE`,
and the attempt lease lets only one copy run. Answering without that second transaction doubles
the submissions the master takes per second (bench/submit.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from sqlalchemy import Engine, update
from sqlmodel import Session, col

from master.models import JobAttempt, utcnow

log = logging.getLogger(__name__)

#: Ids per UPDATE: far below SQLite's limit on bound parameters.
CHUNK = 500


class PublishedMarks:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._pending: list[int] = []

    def add(self, attempt_ids: Iterable[int]) -> None:
        with self._lock:
            self._pending.extend(attempt_ids)

    def flush(self) -> int:
        """Write the pending marks; on a database error they stay pending for the next call."""
        with self._lock:
            ids, self._pending = self._pending, []
        if not ids:
            return 0
        try:
            with Session(self._engine) as session:
                now = utcnow()
                for start in range(0, len(ids), CHUNK):
                    chunk = ids[start : start + CHUNK]
                    session.exec(  # type: ignore[call-overload]
                        update(JobAttempt)
                        .where(col(JobAttempt.id).in_(chunk), col(JobAttempt.enqueued_at).is_(None))
                        .values(enqueued_at=now)
                    )
                session.commit()
        except Exception:
            self.add(ids)
            raise
        return len(ids)
