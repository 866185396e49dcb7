"""A job's output cut into lines of bounded length, so no line is ever held whole in memory.

A program may print a line of gigabytes, or never print a newline at all; both readers below keep
at most `max_line` bytes of the current line and only count the rest, then end the line with a
marker saying how much was cut.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator

#: Bytes read at a time while skipping the part of a long line that is not kept.
SKIP_CHUNK = 1024 * 1024


def cut_marker(total: int, kept: int) -> bytes:
    """What ends a cut line: its full length and what was kept of it, both in bytes."""
    return f" … [line cut: {total:,} bytes, kept {kept:,}]".encode()


def cut(line: bytes, max_line: int) -> bytes:
    """`line` (no newline) cut to `max_line` bytes and marked, or as it is when short enough."""
    return line if len(line) <= max_line else line[:max_line] + cut_marker(len(line), max_line)


def read_lines(readline: Callable[[int], bytes], max_line: int) -> Iterator[bytes]:
    """Lines from a binary reader's `readline(size)` (a pipe's buffered reader), each ending in
    b"\\n" but maybe the last; a longer one is cut. `readline` does the fast, common case in C."""
    limit = max_line + 1  # a kept line plus its newline
    while line := readline(limit):
        if len(line) < limit or line[-1] == 0x0A:
            yield line
            continue
        total, ended = len(line), False
        while more := readline(SKIP_CHUNK):
            if more[-1] == 0x0A:
                total, ended = total + len(more) - 1, True
                break
            total += len(more)
        yield line[:max_line] + cut_marker(total, max_line) + (b"\n" if ended else b"")


def split_lines(chunks: Iterable[bytes], max_line: int = sys.maxsize) -> Iterator[bytes]:
    """Lines out of a stream cut anywhere (a container's output as the engine sends each write),
    each ending in b"\\n" but maybe the last; a longer one is cut."""
    kept: list[bytes] = []  # the start of the current line, `max_line` bytes at most
    room, total = max_line, 0  # bytes the current line may still keep; its length so far

    for chunk in chunks:
        *complete, rest = chunk.split(b"\n")
        if complete:
            first = complete[0]
            if total:  # the line began in an earlier chunk
                kept.append(first[:room])
                total += len(first)
                head = b"".join(kept)
                yield (head + cut_marker(total, max_line) if total > max_line else head) + b"\n"
                kept, room, total = [], max_line, 0
            else:
                yield cut(first, max_line) + b"\n"
            for line in complete[1:]:
                yield (line if len(line) <= max_line else cut(line, max_line)) + b"\n"
        if rest:
            if room > 0:
                kept.append(rest[:room])
                room -= min(room, len(rest))
            total += len(rest)
    if total:
        head = b"".join(kept)
        yield head + cut_marker(total, max_line) if total > max_line else head
