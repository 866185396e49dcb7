"""A lean HTTP/1.1 keep-alive client on asyncio streams, so that on a 2-core machine the load
generator spends as little CPU as possible next to the server it measures."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any


class Connection:
    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        #: Sent with every request, e.g. an Authorization header.
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self._extra}Content-Length: {len(payload)}\r\n"
        if payload:
            head += "Content-Type: application/json\r\n"
        self._writer.write(head.encode() + b"\r\n" + payload)
        status_line = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await self._reader.readexactly(length)
        return int(status_line.split()[1]), data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def _closed_loop(
    url: str,
    method: str,
    path: str,
    body: Any,
    clients: int,
    seconds: float,
    expect: int,
    headers: dict[str, str] | None,
) -> LoadResult:
    host, port = url.removeprefix("http://").split(":")
    result = LoadResult()
    start = time.perf_counter()
    stop_at = start + seconds

    async def client() -> None:
        conn = Connection(host, int(port), headers)
        try:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                status, _ = await conn.request(method, path, body)
                if status == expect:
                    result.latencies.append(time.perf_counter() - sent)
                else:
                    result.errors += 1
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.perf_counter() - start
    return result


def closed_loop(
    url: str,
    method: str,
    path: str,
    body: Any,
    clients: int,
    seconds: float,
    expect: int = 200,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """`clients` connections, each sending its next request as soon as the last is answered."""
    return asyncio.run(_closed_loop(url, method, path, body, clients, seconds, expect, headers))
