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
            first = after.line + 1 if after is not None and after.attempt == archive.attempt else 0
            end = until.line if until is not None and archive.attempt == until.attempt else None
            lines = await run_in_threadpool(archive_lines, self._store, archive.key, first, end, limit)
            if lines:
                out.append(LogBatch(archive.attempt, first, lines))
                limit -= len(lines)
            if limit <= 0:
                break
        return out


def archive_lines(store: ArtifactStore, key: str, first: int, end: int | None, limit: int) -> list[str]:
    """Lines `first` .. `end` (exclusive; None: to the end) of an archived log, `limit` at most.

    Streamed, never read whole: an archive may be a gigabyte (log_archive_max_bytes), and a page
    costs only the lines before it and the page itself.
    """
    out: list[str] = []
    index, pending = 0, b""
    chunks = store.iter_bytes(key)
    try:
        for chunk in chunks:
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                if end is not None and index >= end:
                    return out
                if index >= first:
                    out.append(raw.decode("utf-8", errors="replace"))
                    if len(out) >= limit:
                        return out
                index += 1
        if pending and index >= first and (end is None or index < end):
            out.append(pending.decode("utf-8", errors="replace"))
        return out
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # stop the download early, and give its connection back
            close()
