"""Redis Streams that carry job logs and worker events, with the key names both sides agree on.

Log entries are batches of lines whose stream ID is `<attempt>-<first line index>`: the IDs rise
by construction, so a repeated write of the same batch is refused by Redis itself, and a reader
can resume from any line without a separate index.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import OutOfMemoryError, ResponseError

from shared.events import Event

EVENTS_KEY = "tf:events"
#: Events the master could not parse or apply, with the reason; capped, newest kept.
DEAD_EVENTS_KEY = "tf:events:dead"
DEAD_EVENTS_MAXLEN = 1_000
#: Bytes of a dead event kept for a person to read: at most a few MB of Redis for the whole stream.
DEAD_EVENT_KEEP = 4096
EVENTS_GROUP = "master"
NODES_KEY = "tf:nodes"
#: Hash of task messages workers refused (shared/signing.py), by reason; /metrics reads it.
REFUSED_MESSAGES_KEY = "tf:messages:refused"


def log_key(job_id: int) -> str:
    return f"tf:logs:{job_id}"


def cancel_key(job_id: int) -> str:
    return f"tf:cancel:{job_id}"


#: Between node name and instance id in a worker's key (`worker.identity`); no hostname holds it.
WORKER_KEY_SEPARATOR = "#"


def split_worker_key(key: str) -> tuple[str, str | None]:
    """(node name, instance id) of a worker's key; a bare node name (an older worker's beat) has
    no instance. The last separator counts: a node name set by hand may hold one."""
    node, sep, instance = key.rpartition(WORKER_KEY_SEPARATOR)
    return (node, instance) if sep and node else (key, None)


def drain_key(worker: str) -> str:
    """Set while one worker (`worker.identity` key: node name and instance) shuts down: its running
    attempts checkpoint and hand themselves back. Per worker, never per node: a sibling worker on
    the same machine and name must not read it."""
    return f"tf:drain:{worker}"


def preempt_key(job_id: int, attempt: int) -> str:
    """Set by the master's admission (master/fairshare/) when it preempts this attempt for a job of
    higher priority; the value says for which. The attempt's worker then checkpoints and hands it
    back as it does at a shutdown, and the master queues the job again without using a retry."""
    return f"tf:preempt:{job_id}-{attempt}"


def node_attempts_key(worker: str) -> str:
    """Hash of the attempts one worker (its identity key) runs, for its heartbeat."""
    return f"tf:node-attempts:{worker}"


@dataclass(frozen=True, order=True)
class LogPosition:
    """A line's place in a job's log: attempt number, then line index within that attempt."""

    attempt: int
    line: int

    @classmethod
    def parse(cls, text: str) -> LogPosition:
        attempt, _, line = text.partition("-")
        return cls(int(attempt), int(line))

    def __str__(self) -> str:
        return f"{self.attempt}-{self.line}"


@dataclass(frozen=True)
class LogBatch:
    attempt: int
    first: int
    lines: list[str]

    @property
    def last(self) -> LogPosition:
        return LogPosition(self.attempt, self.first + len(self.lines) - 1)

    @classmethod
    def from_entry(cls, entry_id: bytes | str, fields: dict) -> LogBatch:
        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        pos = LogPosition.parse(entry)
        text = fields.get(b"lines", fields.get("lines", b""))
        text = text.decode() if isinstance(text, bytes) else text
        return cls(pos.attempt, pos.line, text.split("\n"))

    def after(self, pos: LogPosition | None) -> LogBatch:
        """The part of this batch that comes after `pos`."""
        if pos is None or pos < LogPosition(self.attempt, self.first):
            return self
        skip = pos.line - self.first + 1 if pos.attempt == self.attempt else len(self.lines)
        return LogBatch(self.attempt, self.first + skip, self.lines[skip:])


class LiveBudget:
    """The bytes a job's live stream may hold, and where to cut it so the newest entries fit.

    Entries leave oldest first; the newest always stays, even alone over the limit, so a live reader
    still sees the latest lines. Pure arithmetic: the caller does the XTRIM.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Bytes the stream holds, by this count.
        self.held = 0
        self._entries: deque[tuple[LogPosition, int]] = deque()

    def add(self, first: LogPosition, size: int) -> None:
        """An entry written, `first` its ID (`<attempt>-<first line>`), `size` its bytes."""
        self._entries.append((first, size))
        self.held += size

    def trim_point(self) -> LogPosition | None:
        """The MINID that brings the stream back within the limit: entries with a smaller ID leave.
        None when nothing needs to leave."""
        cut = None
        while self.held > self.limit and len(self._entries) > 1:
            _, size = self._entries.popleft()
            self.held -= size
            cut = self._entries[0][0]
        return cut

    def snapshot(self) -> tuple[int, deque[tuple[LogPosition, int]]]:
        return self.held, self._entries.copy()

    def restore(self, snapshot: tuple[int, deque[tuple[LogPosition, int]]]) -> None:
        """Back to a snapshot: the writes (and trims) counted since never reached Redis."""
        self.held, self._entries = snapshot[0], snapshot[1].copy()


class LogStream:
    """Append and read a job's log lines in Redis (synchronous side, used by workers)."""

    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self._redis = client
        self._maxlen = maxlen

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def append(
        self,
        job_id: int,
        batches: Sequence[LogBatch],
        *,
        trim_before: LogPosition | None = None,
        persist: bool = False,
    ) -> list[int | None]:
        """Write batches in one round trip; batches Redis already holds are skipped, not doubled.

        `trim_before`: entries older than this leave the stream (XTRIM MINID, exact), after the
        writes. `persist`: remove an expiry set when an earlier attempt's log was archived. Returns
        each batch's size in bytes, None for one Redis refused for want of memory (OOM).
        """
        key = log_key(job_id)
        payloads = ["\n".join(batch.lines).encode() for batch in batches]
        pipe = self._redis.pipeline(transaction=False)
        if persist:
            pipe.persist(key)
        for batch, payload in zip(batches, payloads, strict=True):
            pipe.xadd(
                key,
                {"lines": payload},
                id=f"{batch.attempt}-{batch.first}",
                maxlen=self._maxlen,
                approximate=True,
            )
        if trim_before is not None:
            # XTRIM is not refused when Redis is out of memory (it frees some): it always runs.
            pipe.xtrim(key, minid=str(trim_before), approximate=False)
        results = pipe.execute(raise_on_error=False)
        written = results[1 if persist else 0 :][: len(batches)]
        sizes: list[int | None] = []
        for result, payload in zip(written, payloads, strict=True):
            if isinstance(result, OutOfMemoryError):
                sizes.append(None)
            elif isinstance(result, ResponseError) and "equal or smaller" not in str(result):
                raise result
            else:
                sizes.append(len(payload))
        for result in results:
            if isinstance(result, redis.RedisError) and not isinstance(result, ResponseError):
                raise result
        return sizes

    def trim(self, job_id: int, before: LogPosition) -> None:
        """Entries older than `before` leave the stream (allowed when Redis is out of memory)."""
        self._redis.xtrim(log_key(job_id), minid=str(before), approximate=False)

    def expire(self, job_id: int, seconds: int, attempt: int) -> None:
        """The job's live stream goes after `seconds` (`attempt`'s log is archived); a new write
        keeps it. Not when a later attempt already writes there (this one was declared lost and
        archives late): that attempt's first write is behind it, and nothing would keep it."""
        newest: Any = self._redis.xrevrange(log_key(job_id), count=1)
        newest_id = newest[0][0] if newest else None
        if isinstance(newest_id, bytes):
            newest_id = newest_id.decode()
        if newest_id and LogPosition.parse(newest_id).attempt > attempt:
            return
        self._redis.expire(log_key(job_id), seconds)

    def memory(self, job_id: int) -> int:
        """Bytes the job's stream takes in Redis now (sampled estimate), 0 when it has none."""
        return int(self._redis.memory_usage(log_key(job_id)) or 0)

    def next_line(self, job_id: int, attempt: int) -> int:
        """Index the next line of `attempt` would get (for notes written after its worker died)."""
        found: Any = self._redis.xrevrange(
            log_key(job_id), max=f"{attempt}-{2**63 - 1}", min=f"{attempt}-0", count=1
        )
        return LogBatch.from_entry(*found[0]).last.line + 1 if found else 0

    def read(self, job_id: int, after: LogPosition | None = None, count: int = 1000) -> list[LogBatch]:
        start = "-"
        if after is not None:
            # The batch holding `after` starts at or before it: find its ID, then read on from there.
            found: Any = self._redis.xrevrange(log_key(job_id), max=str(after), min="-", count=1)
            start = found[0][0] if found else "-"
        entries: Any = self._redis.xrange(log_key(job_id), min=start, max="+", count=count)
        return batches_after(entries, after)


def batches_after(entries: list, after: LogPosition | None) -> list[LogBatch]:
    """Stream entries as batches, cut to the lines that come after `after`."""
    batches = [LogBatch.from_entry(eid, fields).after(after) for eid, fields in entries]
    return [b for b in batches if b.lines]


class EventBus:
    """Workers publish attempt events to one durable stream; the master reads it as a group."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def publish(self, event: Event) -> str:
        entry = self._redis.xadd(EVENTS_KEY, {"event": event.model_dump_json()})
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    def ensure_group(self) -> None:
        try:
            # From "0": events published before the master ever ran are still applied.
            self._redis.xgroup_create(EVENTS_KEY, EVENTS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, consumer: str, *, pending: bool, count: int, block_ms: int) -> list[tuple[str, bytes]]:
        """Pending entries (delivered before but never acknowledged) first, then new ones, as the raw
        JSON: parsing is the consumer's, so one bad entry cannot fail the read of the others."""
        response: Any = self._redis.xreadgroup(
            EVENTS_GROUP,
            consumer,
            {EVENTS_KEY: "0" if pending else ">"},
            count=count,
            block=None if pending else block_ms,
        )
        out: list[tuple[str, bytes]] = []
        vanished: list[str] = []
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if not fields:  # deleted after delivery: nothing left to apply
                    vanished.append(eid)
                    continue
                raw = fields.get(b"event", fields.get("event"))
                out.append((eid, raw.encode() if isinstance(raw, str) else raw or b""))
        self.ack(vanished)
        return out

    def dead_letter(self, entries: Sequence[tuple[str, bytes, str]]) -> None:
        """Keep (entry id, raw event, reason) of events that will never be applied, for a person to read."""
        if entries:
            pipe = self._redis.pipeline(transaction=False)
            for entry_id, raw, reason in entries:
                fields = {"entry": entry_id, "event": raw[:DEAD_EVENT_KEEP], "reason": reason}
                pipe.xadd(DEAD_EVENTS_KEY, fields, maxlen=DEAD_EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
            pipe.execute()

    def ack(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(EVENTS_KEY, EVENTS_GROUP, *entry_ids)
            # Acknowledged events are applied in the database; the stream need not keep them.
            pipe.xdel(EVENTS_KEY, *entry_ids)
            pipe.execute()
