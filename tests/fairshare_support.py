"""Helpers for the fair-share farm tests: members with tokens of their own, short command jobs,
and a sampler that watches who holds devices while a farm runs."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import user_headers

PY = "python"


def sleep_job(seconds: float = 0.3, queue: str = "cpu", **extra: object) -> dict:
    return {"command": [PY, "-c", f"import time; time.sleep({seconds})"], "queue": queue, **extra}


def held_job(release: Path, queue: str = "cpu") -> dict:
    """A job that runs until `release` exists: it holds its slot for as long as a test needs."""
    script = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)"
    return {"command": [PY, "-c", script, str(release)], "queue": queue}


def tally_job(tally: Path, tag: str, seconds: float = 0.2) -> dict:
    """A job that appends `tag` to `tally` once per run, so a test counts how often each ran."""
    script = (
        "import sys, time\n"
        "with open(sys.argv[1], 'a') as f: f.write(sys.argv[2] + '\\n')\n"
        f"time.sleep({seconds})"
    )
    return {"command": [PY, "-c", script, str(tally), tag], "queue": "cpu"}


def make_member(api: httpx.Client, name: str) -> dict[str, str]:
    """A member made by the admin `api`, logged in: their request headers."""
    return user_headers(api, name)


def set_limits(api: httpx.Client, user: str, queue: str, **caps: int | None) -> None:
    body = {"max_devices": None, "max_queued": None, **caps}
    answer = api.put(f"/users/{user}/limits/{queue}", json=body)
    assert answer.status_code == 200, answer.text


def submit_batch(api: httpx.Client, headers: dict[str, str], jobs: list[dict]) -> list[int]:
    answer = api.post("/jobs/batch", json={"jobs": jobs}, headers=headers)
    assert answer.status_code == 201, answer.text
    return [job["id"] for job in answer.json()]


class HoldingSampler:
    """Polls the running jobs and the fair-share table every ~50 ms in a thread, and keeps the most
    devices each user was seen holding by either: `running` status counts only jobs a worker has
    started, while fair share counts every admitted attempt, which is what the caps bound."""

    def __init__(self, client_factory: Callable[[], httpx.Client], queue: str, interval: float = 0.05):
        self.client_factory, self.queue, self.interval = client_factory, queue, interval
        self.running_max: dict[str, int] = defaultdict(int)
        self.admitted_max: dict[str, int] = defaultdict(int)
        self.samples = 0
        #: Answers of GET /api/fairshare other than 200, kept so the running-status count goes on.
        self.fairshare_errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> HoldingSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise AssertionError("the sampler failed") from self.error

    def _run(self) -> None:
        try:
            with self.client_factory() as client:
                while not self._stop.wait(self.interval):
                    self._sample(client)
        except BaseException as exc:  # handed to the test in __exit__
            self.error = exc

    def _sample(self, client: httpx.Client) -> None:
        running: dict[str, int] = defaultdict(int)
        page = client.get("/jobs", params={"status": "running", "queue": self.queue, "limit": 500})
        page.raise_for_status()
        for job in page.json()["items"]:
            running[job["owner"]] += job["devices"]
        for user, devices in running.items():
            self.running_max[user] = max(self.running_max[user], devices)
        shares = client.get("/fairshare")
        if shares.status_code != 200:
            self.fairshare_errors.append(f"{shares.status_code} {shares.text[:200]}")
            return
        for share in shares.json()["users"]:
            if share["queue"] == self.queue:
                user = share["user"]
                self.admitted_max[user] = max(self.admitted_max[user], share["running_devices"])
        self.samples += 1
