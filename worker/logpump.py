"""Moving a job's output lines, in order and in batches, to its Redis stream and a local file."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis

from shared.redis_memory import MemoryGauge
from shared.settings import Settings
from shared.streams import LiveBudget, LogBatch, LogPosition, LogStream

log = logging.getLogger(__name__)

#: Lines per Redis entry at most; bigger batches cut round trips, smaller ones cut latency.
MAX_BATCH_LINES = 2000
#: Bytes per Redis entry at most, so the live budget trims in steps this small.
MAX_BATCH_BYTES = 1024 * 1024
TAIL_LINES = 50
#: Stands for the entries earlier attempts left in the stream, older than any of this attempt's.
EARLIER_ATTEMPTS = LogPosition(0, 0)


@dataclass(frozen=True)
class LogLimits:
    #: Bytes of the job's log its live Redis stream may hold (older entries are trimmed).
    live_bytes: int
    #: Bytes of this attempt's log file (its archive in S3); later lines are live only.
    file_bytes: int
    #: Live lines are dropped while Redis's used memory is above this share of its maxmemory.
    memory_fraction: float

    @classmethod
    def of(cls, settings: Settings) -> LogLimits:
        return cls(
            settings.log_live_max_bytes, settings.log_archive_max_bytes, settings.log_live_memory_fraction
        )


class LogPump:
    """Reads a process's output on one thread and flushes it to Redis on another.

    Every line goes to the local log file at once (up to its cap), so nothing is lost if Redis is
    away; lines Redis has not taken yet stay queued and are sent, in order, when it is back. Redis
    holds at most `limits.live_bytes` of the job's log: older entries are trimmed, and queued lines
    beyond that are never sent (they would be trimmed at once). When Redis is full, live lines are
    dropped, counted and noted; the file keeps them.
    """

    def __init__(
        self,
        stream: LogStream,
        job_id: int,
        attempt: int,
        log_file: Path,
        flush_interval: float,
        limits: LogLimits,
    ) -> None:
        self._stream = stream
        self._job_id = job_id
        self._attempt = attempt
        self._file = log_file.open("a", encoding="utf-8", buffering=1024 * 1024)
        self._flush_interval = flush_interval
        self._limits = limits
        self._gauge = MemoryGauge(stream.client)
        self._budget = LiveBudget(limits.live_bytes)
        #: Entries are small next to the budget, so trimming keeps the stream close under it.
        self._batch_bytes = max(4096, min(MAX_BATCH_BYTES, limits.live_bytes // 8))
        self._file_room = limits.file_bytes
        self._pending: list[str] = []
        self._next_line = 0
        #: Whether this attempt has written to the stream yet (the first write measures what earlier
        #: attempts left there and removes the expiry their archive set).
        self._written = False
        #: Live lines never shown live: dropped while Redis was full, or skipped past the budget.
        self.dropped = 0
        self.skipped = 0
        self._dropping = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._readers: list[threading.Thread] = []
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._flusher = threading.Thread(target=self._flush_loop, name=f"logflush-{job_id}", daemon=True)
        self._flusher.start()

    def write(self, line: str) -> None:
        """One line (no newline)."""
        # Bytes as written (UTF-8): a replaced undecodable byte takes three, not the one it was.
        n = nbytes(line) + 1
        with self._lock:
            if n <= self._file_room:
                self._file.write(line + "\n")
                self._file_room -= n
            elif self._file_room >= 0:
                self._cut_file()
            self._pending.append(line)
            self.tail.append(line)
        if len(self._pending) >= MAX_BATCH_LINES:
            self._wake.set()

    def _cut_file(self) -> None:
        """The file is full: a note, its last line, says so (also live, at the same line index)."""
        note = (
            f"[trainfarm] this attempt's log file reached its cap of {self._limits.file_bytes:,} "
            "bytes (log_archive_max_bytes): later lines are shown live but not archived"
        )
        self._file.write(note + "\n")
        self._file_room = -1
        self._pending.append(note)
        self.tail.append(note)

    def note(self, message: str) -> None:
        """A line from trainfarm itself, marked so users tell it from their program's output."""
        self.write(f"[trainfarm] {message}")

    def follow(self, lines: Iterable[bytes]) -> None:
        """Start reading a process's output lines (stdout and stderr together) until they end."""
        reader = threading.Thread(
            target=self._read, args=(lines,), name=f"logread-{self._job_id}", daemon=True
        )
        reader.start()
        self._readers.append(reader)

    def _read(self, lines: Iterable[bytes]) -> None:
        for raw in lines:
            self.write(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def _take(self) -> list[tuple[LogBatch, int]]:
        """The queued lines as batches with their sizes in bytes, oldest first."""
        with self._lock:
            lines, self._pending = self._pending, []
            self._file.flush()
        queued = sum(map(nbytes, lines)) + len(lines)
        skip = 0
        if queued > self._limits.live_bytes:
            # Older than the live budget: Redis would trim them at once. They are in the file.
            while queued > self._limits.live_bytes and skip < len(lines) - 1:
                queued -= nbytes(lines[skip]) + 1
                skip += 1
            self.skipped += skip
            self._next_line += skip
        return [
            (LogBatch(self._attempt, self._next_line + start - skip, chunk), size)
            for start, chunk, size in _chunks(lines, skip, self._batch_bytes)
        ]

    def _flush_once(self) -> bool:
        batches = self._take()
        if not batches:
            return True
        count = sum(len(b.lines) for b, _ in batches)
        counted = self._budget.snapshot()  # taken back if this flush never reaches Redis
        try:
            memory = self._gauge.read()
            if memory.above(self._limits.memory_fraction):
                self._drop(count, f"Redis is nearly full ({memory.describe()})")
                return True
            if not self._written:
                self._budget.add(EARLIER_ATTEMPTS, self._stream.memory(self._job_id))
            for batch, size in batches:
                self._budget.add(LogPosition(batch.attempt, batch.first), size)
            sizes = self._stream.append(
                self._job_id,
                [b for b, _ in batches],
                trim_before=self._budget.trim_point(),
                persist=not self._written,
            )
        except redis.RedisError as exc:
            log.warning("log stream unavailable (%s); keeping %d batches for later", exc, len(batches))
            self._budget.restore(counted)
            with self._lock:
                self._pending = [line for b, _ in batches for line in b.lines] + self._pending
            return False
        self._written = True
        self._next_line += count
        refused = sum(len(b.lines) for (b, _), size in zip(batches, sizes, strict=True) if size is None)
        if refused:
            self._drop(refused, "Redis is out of memory", advanced=True)
        elif self._dropping:
            self.note(
                f"{self._dropping:,} live log lines were dropped while Redis was full; "
                "this attempt's archived log has them"
            )
            self._dropping = 0
        return True

    def _drop(self, count: int, why: str, advanced: bool = False) -> None:
        """Lines that will never be shown live (the file has them), counted and noted once."""
        if not advanced:
            self._next_line += count
        if not self._dropping:
            log.warning("job %s: %s; dropping live log lines", self._job_id, why)
            self.note(f"{why}: live log lines are dropped for now; the archived log keeps them all")
        self._dropping += count
        self.dropped += count

    def _flush_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            if not self._flush_once():
                self._closed.wait(1.0)

    def join_readers(self, timeout: float) -> None:
        """Wait until the followed outputs have ended and every line is taken."""
        for reader in self._readers:
            reader.join(timeout)

    def close(self, timeout: float = 600.0) -> None:
        """Wait for the readers, then flush everything; retries while Redis is away, up to `timeout`."""
        self.join_readers(timeout)
        self._closed.set()
        self._flusher.join()
        deadline = threading.Event()
        waited = 0.0
        while not self._flush_once() and waited < timeout:
            deadline.wait(1.0)
            waited += 1.0
        if self.dropped or self.skipped:
            log.warning(
                "job %s attempt %s: %d live lines dropped (Redis full), %d past the live budget",
                self._job_id,
                self._attempt,
                self.dropped,
                self.skipped,
            )
        self._file.close()


def nbytes(line: str) -> int:
    """UTF-8 bytes of `line`: budgets are in bytes, and text beyond ASCII takes up to four per
    character. An ASCII string knows it is one at once, so the common case costs no encoding."""
    return len(line) if line.isascii() else len(line.encode("utf-8", "surrogatepass"))


def _chunks(lines: list[str], start: int, max_bytes: int) -> Iterable[tuple[int, list[str], int]]:
    """(first index, lines, bytes) of batches of at most MAX_BATCH_LINES lines and `max_bytes`."""
    for first in range(start, len(lines), MAX_BATCH_LINES):
        chunk = lines[first : first + MAX_BATCH_LINES]
        size = sum(map(nbytes, chunk)) + len(chunk) - 1
        if size <= max_bytes:
            yield first, chunk, size
        else:
            yield from _by_bytes(chunk, first, max_bytes)


def _by_bytes(lines: list[str], offset: int, max_bytes: int) -> Iterable[tuple[int, list[str], int]]:
    first, size = 0, 0
    for i, line in enumerate(lines):
        n = nbytes(line) + 1
        if i > first and size + n > max_bytes:
            yield offset + first, lines[first:i], size - 1
            first, size = i, 0
        size += n
    yield offset + first, lines[first:], size - 1
