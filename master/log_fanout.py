"""Who follows which job's live log, and what each follower has waiting: the log hub's bookkeeping.

No I/O here: the hub (master/log_hub.py) reads Redis and the database and calls in; these decide
who gets what, when a follower has fallen behind, and when a job's followers get its end.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shared.status import JobStatus
from shared.streams import LogBatch, LogPosition

#: Text a follower may have waiting before it is marked lagged and re-reads from storage instead.
#: Entries are shared by all followers of a job, so this bounds the memory a job's laggards hold.
SUBSCRIBER_BUFFER_BYTES = 16 * 1024 * 1024
#: Status of a followed job that no longer exists (the stream ends with it).
GONE = "unknown"
#: The cursor of a job whose stream had no entry yet when it was first followed.
NOTHING = LogPosition(0, 0)


@dataclass(eq=False)
class LiveBatch:
    """One stream entry as every follower of its job gets it (the same object for all of them)."""

    batch: LogBatch
    size: int
    #: The SSE frame of the whole batch, rendered by the first follower that sends it, reused by the rest.
    frame: str | None = None


class Subscription:
    """One follower's view of the hub: a bounded queue of new entries, then the job's end."""

    def __init__(self, job_id: int, limit: int) -> None:
        self.job_id = job_id
        self._limit = limit
        self._queue: deque[LiveBatch] = deque()
        self._bytes = 0
        #: Entries were dropped: the follower must re-read from its position before taking more.
        self.lagged = False
        #: The job's final status, set once every entry before it has been queued (or dropped).
        self.ended: str | None = None
        #: The hub stopped (the master is shutting down): the stream closes without `end`.
        self.closed = False
        self._ready = asyncio.Event()
        #: The job's entry in the fan-out, whose cursor says where this queue is complete from.
        self._followed: _Followed | None = None

    def put(self, item: LiveBatch) -> None:
        if self.lagged:
            return
        if self._bytes + item.size > self._limit and self._queue:
            self._queue.clear()
            self._bytes = 0
            self.lagged = True
        else:
            self._queue.append(item)
            self._bytes += item.size
        self._ready.set()

    def take(self) -> list[LiveBatch]:
        """Everything queued so far, oldest first."""
        items = list(self._queue)
        self._queue.clear()
        self._bytes = 0
        self._ready.clear()
        return items

    def resync(self) -> LogPosition | None:
        """The follower is about to re-read from its own position, so what is queued is not needed.
        Returns the newest entry stored before the queue starts again (None: none yet): the re-read
        need go no further, and must not chase the live end through storage."""
        self.take()
        self.lagged = False
        cursor = self._followed.cursor if self._followed is not None else NOTHING
        return cursor if cursor > NOTHING else None

    @property
    def pending(self) -> bool:
        return bool(self._queue) or self.lagged

    def finish(self, status: str) -> None:
        self.ended = status
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def wait(self, timeout: float) -> bool:
        """Until there is something to take, an end or a close; False if `timeout` passed first."""
        if self._ready.is_set():
            return True
        try:
            # asyncio.timeout, not wait_for: no task per wait, and a follower waits once per entry.
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True


@dataclass
class _Followed:
    #: Id of the newest entry handed out; the next XREAD asks for what comes after it.
    cursor: LogPosition
    subs: set[Subscription] = field(default_factory=set)
    #: Terminal status seen by a status read; the job ends once its stream is drained after that.
    terminal: str | None = None


class Fanout:
    """Who follows which job and from where: the hub's bookkeeping, with no I/O of its own."""

    def __init__(self, buffer_bytes: int = SUBSCRIBER_BUFFER_BYTES) -> None:
        self._buffer_bytes = buffer_bytes
        self._jobs: dict[int, _Followed] = {}

    def follows(self, job_id: int) -> bool:
        return job_id in self._jobs

    def add(self, job_id: int, cursor: LogPosition) -> Subscription:
        """A new follower; `cursor` (the stream's last entry id now) is used if the job is new."""
        followed = self._jobs.setdefault(job_id, _Followed(cursor))
        sub = Subscription(job_id, self._buffer_bytes)
        sub._followed = followed
        followed.subs.add(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        followed = self._jobs.get(sub.job_id)
        if followed is None:
            return
        followed.subs.discard(sub)
        if not followed.subs:
            del self._jobs[sub.job_id]

    def cursors(self) -> dict[int, LogPosition]:
        return {job_id: f.cursor for job_id, f in self._jobs.items()}

    def deliver(self, job_id: int, entries: Iterable[tuple[bytes | str, dict]]) -> int:
        """Hand entries newer than the job's cursor to each follower; returns how many were new."""
        followed = self._jobs.get(job_id)
        if followed is None:  # its last follower left while the read was out
            return 0
        new = 0
        for entry_id, fields in entries:
            batch = LogBatch.from_entry(entry_id, fields)
            position = LogPosition(batch.attempt, batch.first)
            if position <= followed.cursor:  # the job was followed anew from a later entry meanwhile
                continue
            item = LiveBatch(batch, sum(len(line) + 1 for line in batch.lines))
            for sub in followed.subs:
                sub.put(item)
            followed.cursor = position
            new += 1
        return new

    def saw_statuses(self, asked: Sequence[int], found: dict[int, JobStatus]) -> None:
        """Note which of the asked jobs have ended; a job not found has gone, which ends it too."""
        for job_id in asked:
            followed = self._jobs.get(job_id)
            status = found.get(job_id)
            if followed is not None and (status is None or status.terminal):
                followed.terminal = status.value if status is not None else GONE

    def ending(self) -> list[int]:
        """Jobs seen terminal: they end once an XREAD started after that finds their stream drained."""
        return [job_id for job_id, f in self._jobs.items() if f.terminal is not None]

    def finish(self, job_id: int) -> None:
        followed = self._jobs.pop(job_id, None)
        if followed is None:
            return
        for sub in followed.subs:
            sub.finish(followed.terminal or GONE)

    def close(self) -> None:
        for followed in self._jobs.values():
            for sub in followed.subs:
                sub.close()
        self._jobs.clear()

    @property
    def jobs(self) -> int:
        return len(self._jobs)

    @property
    def followers(self) -> int:
        return sum(len(f.subs) for f in self._jobs.values())
