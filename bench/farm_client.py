"""What several benchmarks do with the master's API: submit a job, wait for its end, read its times."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


def command_job(*argv: str, **extra: Any) -> dict[str, Any]:
    return {"command": list(argv), "queue": "cpu", "max_retries": 0, **extra}


def submit(api: httpx.Client, spec: dict[str, Any]) -> int:
    response = api.post("/jobs", json=spec)
    if response.status_code != 201:
        raise RuntimeError(f"submission refused: {response.status_code} {response.text}")
    return int(response.json()["id"])


def wait_end(api: httpx.Client, job_id: int, timeout: float = 120, interval: float = 0.02) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(interval)
    raise RuntimeError(f"job {job_id} did not end within {timeout}s")


def timestamp(value: str) -> float:
    """An API datetime as Unix seconds; the master stores UTC, and SQLite drops the zone."""
    parsed = datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def sse_lines(api: httpx.Client, job_id: int, timeout: float = 120) -> Iterator[list[str]]:
    """The job's log as its SSE stream delivers it: one list of lines per `log` event, until `end`."""
    with api.stream("GET", f"/jobs/{job_id}/logs/stream", timeout=timeout) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "log":
                yield json.loads(line[6:])["lines"]
            elif line.startswith("data: ") and event == "end":
                return
