"""Moving a job's output lines, in order and in batches, to its Redis stream and a local file."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import redis

from shared.streams import LogBatch, LogStream

log = logging.getLogger(__name__)

#: Lines per Redis entry at most; bigger batches cut round trips, smaller ones cut latency.
MAX_BATCH_LINES = 2000
TAIL_LINES = 50


class LogPump:
    """Reads a process's output on one thread and flushes it to Redis on another.

    Every line goes to the local log file at once, so nothing is lost if Redis is away; lines Redis
    has not taken yet stay queued and are sent, in order, when it is back.
    """

    def __init__(
        self, stream: LogStream, job_id: int, attempt: int, log_file: Path, flush_interval: float
    ) -> None:
        self._stream = stream
        self._job_id = job_id
        self._attempt = attempt
        self._file = log_file.open("a", encoding="utf-8", buffering=1024 * 1024)
        self._flush_interval = flush_interval
        self._pending: list[str] = []
        self._next_line = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._readers: list[threading.Thread] = []
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._flusher = threading.Thread(target=self._flush_loop, name=f"logflush-{job_id}", daemon=True)
        self._flusher.start()

    def write(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")
            self._pending.append(line)
            self.tail.append(line)
        if len(self._pending) >= MAX_BATCH_LINES:
            self._wake.set()

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

    def _take(self) -> list[LogBatch]:
        with self._lock:
            lines, self._pending = self._pending, []
            self._file.flush()
        batches = []
        for start in range(0, len(lines), MAX_BATCH_LINES):
            chunk = lines[start : start + MAX_BATCH_LINES]
            batches.append(LogBatch(self._attempt, self._next_line + start, chunk))
        return batches

    def _flush_once(self) -> bool:
        batches = self._take()
        if not batches:
            return True
        try:
            self._stream.append(self._job_id, batches)
        except redis.RedisError as exc:
            log.warning("log stream unavailable (%s); keeping %d batches for later", exc, len(batches))
            with self._lock:
                self._pending = [line for b in batches for line in b.lines] + self._pending
            return False
        self._next_line += sum(len(b.lines) for b in batches)
        return True

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
        self._file.close()
