"""One reader for every live-log follower: the master's SSE connections share it.

A live-log stream (`GET /api/jobs/{id}/logs/stream`) used to poll the database once a second and
hold a Redis connection in a blocking XREAD of its own, so 200 watchers cost 200 connections and
200 queries a second. Here one asyncio task does a single XREAD over the streams of every followed
job, from the last entry it has seen of each, and hands each new entry to the followers of that job;
once a second it reads the status of every followed job in one query. Its Redis and database work
grows with the jobs followed and the lines they print, not with the connections; what a connection
adds is the writing of its lines to its socket (bench figure 7).

What each follower is promised, and why it holds:

- *Nothing lost between history and live.* A follower subscribes before it reads history
  (`LogReader.read`: Redis, then the S3 archives). Its queue gets every entry after the job's cursor
  at that moment (the newest entry handed out; for a job's first follower, the stream's last entry
  then, not "$", which would lose what is written before the next XREAD), and every entry up to the
  cursor is already stored, so the history read goes through the cursor and stops there; reading
  on "until empty" would chase the live end whenever reads queue up. Overlaps are cut by position
  (`LogBatch.after`).
- *The `end` comes after the last line.* A job's lines are all stored before its status turns
  terminal, so the job ends for its followers after an XREAD that began after the hub saw that
  status and came back with the job's stream drained.
- *A slow client slows nobody else.* The hub never waits for a follower: each has a queue bounded by
  bytes (`SUBSCRIBER_BUFFER_BYTES`). One that falls behind has its queue emptied and is marked
  lagged; it then re-reads from its own position through `LogReader.read`, as on a reconnect, and
  carries on from its queue. Its memory stays bounded and the others never notice.

When a job is first followed, an XADD to a stream of the hub's own wakes the blocking XREAD, so the
new job's lines flow at once rather than after the block timeout. Followers that connect together
share one look-up of a new job's stream, and take turns (`history_slots`) for their history reads,
so a crowd does not empty the master's Redis pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from master.log_fanout import SUBSCRIBER_BUFFER_BYTES, Fanout, Subscription
from master.models import Job
from shared.status import JobStatus
from shared.streams import LogPosition, log_key

log = logging.getLogger(__name__)

#: Entries per stream per XREAD; a job that returns this many may have more, so it cannot end yet.
#: Entries are at most 1 MiB (worker/logpump.py), so one round hands a follower at most 8 MiB, half
#: its queue: a follower that takes between rounds never falls behind, however fast a job prints.
READ_COUNT = 8
#: How long one XREAD waits when nothing is new; the status poll keeps its own pace.
BLOCK_MS = 1000
#: Seconds between status reads of the followed jobs: how soon an `end` follows a job's end.
STATUS_INTERVAL = 1.0
#: Followers reading their history at once: a crowd that connects together (200 watchers, a
#: dashboard reload) queues here instead of taking every connection of the master's Redis pool.
HISTORY_READS = 16
#: Seconds to wait after Redis or the database failed a round.
BACKOFF = 1.0


def job_statuses(engine: Engine) -> Callable[[Sequence[int]], dict[int, JobStatus]]:
    """The hub's status read: one query for all followed jobs."""

    def read(job_ids: Sequence[int]) -> dict[int, JobStatus]:
        with Session(engine) as session:
            rows = session.exec(select(Job.id, Job.status).where(col(Job.id).in_(list(job_ids)))).all()
        return {job_id: JobStatus(status) for job_id, status in rows if job_id is not None}

    return read


class LogHub:
    """The one task that reads every followed job's log stream and fans the entries out.

    `reader` is a Redis client of the hub's own: its one connection spends most of its time in a
    blocking XREAD. `waker` is any other client, for the XADD that cuts that XREAD short.
    `statuses` reads the status of the given jobs (`job_statuses(engine)`).
    """

    def __init__(
        self,
        reader: aioredis.Redis,
        waker: aioredis.Redis,
        statuses: Callable[[Sequence[int]], dict[int, JobStatus]],
        *,
        block_ms: int = BLOCK_MS,
        status_interval: float = STATUS_INTERVAL,
        buffer_bytes: int = SUBSCRIBER_BUFFER_BYTES,
    ) -> None:
        self._reader = reader
        self._waker = waker
        self._statuses = statuses
        self._block_ms = block_ms
        self._status_interval = status_interval
        self.fanout = Fanout(buffer_bytes)
        self._wake_key = f"tf:log-hub:wake:{uuid.uuid4().hex[:12]}"
        self._wake_cursor = "0-0"
        self._changed = asyncio.Event()
        self._polled = 0.0
        self._reading = False
        self._task: asyncio.Task[None] | None = None
        self._starting: dict[int, asyncio.Future[LogPosition]] = {}
        #: Held by a follower around each history read (`LogReader.read`).
        self.history_slots = asyncio.Semaphore(HISTORY_READS)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="log-hub")

    async def stop(self) -> None:
        self.fanout.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self._waker.delete(self._wake_key)
        await self._reader.aclose()

    async def subscribe(self, job_id: int) -> Subscription:
        """Follow a job's new entries; call `unsubscribe` when done, however the stream ends."""
        if self.fanout.follows(job_id):
            return self.fanout.add(job_id, LogPosition(0, 0))
        # Followers that arrive together for a job not followed yet share one look-up of its end,
        # shielded so that one of them leaving does not cancel it for the others.
        starting = self._starting.get(job_id)
        if starting is None:
            starting = self._starting[job_id] = asyncio.ensure_future(self._last_entry(job_id))
            starting.add_done_callback(lambda _: self._starting.pop(job_id, None))
        cursor = await asyncio.shield(starting)
        new = not self.fanout.follows(job_id)  # the first of them to get here starts the following
        sub = self.fanout.add(job_id, cursor)
        if new:
            self._changed.set()
            if self._reading:
                try:
                    await self._wake()
                except BaseException:  # cancelled or Redis away: nobody would ever unsubscribe it
                    self.fanout.remove(sub)
                    raise
        return sub

    async def _last_entry(self, job_id: int) -> LogPosition:
        last = await self._waker.xrevrange(log_key(job_id), max="+", min="-", count=1)
        return LogPosition.parse(_text(last[0][0])) if last else LogPosition(0, 0)

    def unsubscribe(self, sub: Subscription) -> None:
        # Synchronous, so that it completes even inside a cancelled or closing stream; the XREAD
        # drops the job's stream at its next round.
        self.fanout.remove(sub)

    @property
    def readers(self) -> int:
        """Blocking Redis reads serving all followers: one while any job is followed."""
        return 1 if self._reading else 0

    async def _wake(self) -> None:
        pipe = self._waker.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1)
        pipe.expire(self._wake_key, 3600)  # a master that dies leaves no key behind for long
        await pipe.execute()

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            if not self.fanout.jobs:
                self._reading = False
                await self._changed.wait()
                continue
            self._reading = True
            try:
                await self._poll_statuses()
                await self._read_round()
            except (RedisError, OSError) as exc:
                log.warning("live-log reader: Redis failed (%s); retrying in %.0fs", exc, BACKOFF)
                await asyncio.sleep(BACKOFF)
            except Exception:
                log.exception("live-log reader failed; retrying in %.0fs", BACKOFF)
                await asyncio.sleep(BACKOFF)

    async def _poll_statuses(self) -> None:
        if time.monotonic() - self._polled < self._status_interval:
            return
        asked = list(self.fanout.cursors())
        try:
            found = await asyncio.to_thread(self._statuses, asked)
        except Exception as exc:  # the database away for a while: lines keep flowing, the end comes later
            log.warning("live-log reader could not read job statuses (%s); trying again", exc)
            return
        finally:
            self._polled = time.monotonic()
        self.fanout.saw_statuses(asked, found)

    async def _read_round(self) -> None:
        ending = self.fanout.ending()
        streams: dict[str, str] = {log_key(j): str(c) for j, c in self.fanout.cursors().items()}
        streams[self._wake_key] = self._wake_cursor
        # A job about to end must not wait out a block: its stream is read once more at once. Nor
        # does any XREAD outlast the next status read, so that a job's end is noticed on time.
        until_poll = self._polled + self._status_interval - time.monotonic()
        block = None if ending else max(1, min(self._block_ms, int(until_poll * 1000)))
        response = await self._reader.xread(streams, count=READ_COUNT, block=block)  # type: ignore[arg-type]
        got: dict[int, int] = {}
        for key, entries in _streams(response):
            if key == self._wake_key:
                self._wake_cursor = _text(entries[-1][0])
                continue
            job_id = int(key.rsplit(":", 1)[1])
            self.fanout.deliver(job_id, entries)
            got[job_id] = len(entries)
        for job_id in ending:
            if got.get(job_id, 0) < READ_COUNT:
                self.fanout.finish(job_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _streams(response: Any) -> list[tuple[str, list]]:
    """XREAD's answer as (key, entries) pairs, in the RESP2 (list) or RESP3 (dict) shape."""
    if not response:
        return []
    pairs = response.items() if isinstance(response, dict) else response
    return [(_text(key), list(entries)) for key, entries in pairs]
