"""Reading a job's log: live lines from Redis, older ones from the archives workers upload to S3."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from shared.storage import ArtifactStore
from shared.streams import LogBatch, LogPosition, batches_after, log_key


def gap_note(after: LogPosition | None, oldest: LogPosition | None) -> LogBatch | None:
    """One line standing for lines that left Redis (the live budget) before they were archived:
    said rather than skipped in silence. It takes the place of the last missing line, so a reader
    going on from it reads on from Redis's oldest line."""
    if oldest is None or oldest.line == 0 or (after is not None and after >= oldest):
        return None
    first = after.line + 1 if after is not None and after.attempt == oldest.attempt else 0
    if first >= oldest.line:
        return None
    text = (
        f"[trainfarm] {oldest.line - first:,} lines of attempt {oldest.attempt} are no longer in the "
        "live log (log_live_max_bytes); its archived log has them once the attempt ends"
    )
    return LogBatch(oldest.attempt, oldest.line - 1, [text])


@dataclass(frozen=True)
class ArchivedLog:
    attempt: int
    key: str


class LogReader:
    def __init__(self, client: aioredis.Redis, store: ArtifactStore) -> None:
        self._redis = client
        self._store = store

    async def read(
        self, job_id: int, archives: Sequence[ArchivedLog], after: LogPosition | None, limit: int
    ) -> list[LogBatch]:
        """Up to about `limit` lines after `after`, in order, wherever they are kept."""
        key = log_key(job_id)
        first: Any = await self._redis.xrange(key, min="-", max="+", count=1)
        oldest_start = LogPosition.parse(first[0][0].decode()) if first else None
        batches: list[LogBatch] = []
        # Lines Redis no longer holds (trimmed, flushed, restarted without persistence) come from S3.
        if oldest_start is None or after is None or after < oldest_start:
            batches = await self._from_archives(archives, after, oldest_start, limit)
        if batches:
            after = batches[-1].last
        remaining = limit - sum(len(b.lines) for b in batches)
        if remaining > 0:
            start = "-"
            if after is not None:
                found: Any = await self._redis.xrevrange(key, max=str(after), min="-", count=1)
                start = found[0][0] if found else "-"
            entries: Any = await self._redis.xrange(key, min=start, max="+", count=min(1000, remaining))
            live = batches_after(entries, after)
            gap = gap_note(after, oldest_start) if live else None
            batches += [gap, *live] if gap else live
        return batches

    async def _from_archives(
        self,
        archives: Sequence[ArchivedLog],
        after: LogPosition | None,
        until: LogPosition | None,
        limit: int,
    ) -> list[LogBatch]:
        out: list[LogBatch] = []
        for archive in sorted(archives, key=lambda a: a.attempt):
            if after is not None and archive.attempt < after.attempt:
                continue
            if until is not None and archive.attempt > until.attempt:
                break
            text = await run_in_threadpool(self._store.read_text, archive.key)
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            if until is not None and archive.attempt == until.attempt:
                lines = lines[: until.line]
            batch = LogBatch(archive.attempt, 0, lines).after(after)
            if batch.lines:
                out.append(LogBatch(batch.attempt, batch.first, batch.lines[:limit]))
                limit -= len(out[-1].lines)
            if limit <= 0:
                break
        return out
