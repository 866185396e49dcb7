"""Notifications end to end: a real master (and worker where a job must run) delivering to a real
HTTP receiver on 127.0.0.1 and a real SMTP server (aiosmtpd), as an operator would see them."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from shared.settings import Settings
from tests.conftest import run_cli, user_client, wait_for, wait_status
from trainfarm.services import free_port

PY = sys.executable
QUICK_JOB = {"command": [PY, "-c", "print('hello')"], "queue": "cpu"}
#: Only the first test runs on both databases: the others exercise the notifier, not SQL dialects.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# A real receiver --------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server in a thread that records every POST and answers `answers` first, then 200."""

    port: int = field(default_factory=free_port)
    answers: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:  # quiet: pytest shows failures
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver().start()
    yield made
    made.stop()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, _server: object, _session: object, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Controller, Mailbox]]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, mailbox
    controller.stop()


@pytest.fixture
def settings(
    settings: Settings, smtp_server: tuple[Controller, Mailbox], request: pytest.FixtureRequest
) -> Settings:
    """The farm's settings with receivers on 127.0.0.1 allowed, short retry waits and email on."""
    controller, _ = smtp_server
    update: dict[str, Any] = {
        "webhook_allow_private": True,
        "webhook_retry_base": 0.2,
        "smtp_host": "127.0.0.1",
        "smtp_port": controller.port,
        "smtp_starttls": False,
        **getattr(request, "param", {}),
    }
    return settings.model_copy(update=update)


# Helpers ----------------------------------------------------------------------------------------


def verify(secret: str, received: Received) -> bool:
    """What a receiver does (the README's five lines)."""
    stamp = received.headers["X-Trainfarm-Timestamp"]
    expected = hmac.new(secret.encode(), f"{stamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(stamp)) < 300
    return fresh and hmac.compare_digest(f"sha256={expected}", received.headers["X-Trainfarm-Signature"])


def add_webhook(api: httpx.Client, url: str, **body: Any) -> dict[str, Any]:
    answer = api.post("/webhooks", json={"url": url, **body})
    assert answer.status_code == 201, answer.text
    return answer.json()


def deliveries(api: httpx.Client, hook_id: int) -> list[dict[str, Any]]:
    answer = api.get(f"/webhooks/{hook_id}/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def wait_delivered(
    api: httpx.Client, hook_id: int, count: int = 1, timeout: float = 60
) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        items = deliveries(api, hook_id)
        return items if len(items) == count and all(d["status"] == "delivered" for d in items) else None

    return wait_for(done, timeout, what=f"{count} delivered deliveries of webhook {hook_id}")  # type: ignore[return-value]


# Tests ------------------------------------------------------------------------------------------


def test_job_end_is_delivered_signed_and_only_its_owner_sees_the_webhook(
    api: httpx.Client, worker: object, receiver: Receiver
) -> None:
    made = add_webhook(api, receiver.url)
    secret = made["secret"]
    assert secret.startswith("whsec_") and made["format"] == "json"
    assert made["events"] == ["job.succeeded", "job.failed", "job.cancelled", "job.pruned", "sweep.ended"]
    assert "secret" not in api.get(f"/webhooks/{made['id']}").json()
    assert all("secret" not in h for h in api.get("/webhooks").json())
    assert secret not in json.dumps(api.get("/audit").json())

    job_id = api.post("/jobs", json={**QUICK_JOB, "name": "notify-ok", "tags": ["nightly"]}).json()["id"]
    wait_status(api, job_id, {"succeeded"})
    [delivery] = wait_delivered(api, made["id"])
    [request] = receiver.requests
    assert verify(secret, request)
    assert not verify("whsec_someone-else", request)
    assert request.headers["X-Trainfarm-Event"] == "job.succeeded"
    assert request.headers["X-Trainfarm-Delivery"] == str(delivery["id"])
    body = request.json()
    me = api.get("/auth/me").json()["name"]
    assert body["event"] == "job.succeeded"
    job = body["job"]
    assert (job["id"], job["name"], job["owner"], job["project"], job["tags"]) == (
        job_id,
        "notify-ok",
        me,
        "default",
        ["nightly"],
    )
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["started_at"] and job["finished_at"] and job["url"].endswith(f"/#job-{job_id}")
    assert (delivery["attempts"], delivery["last_code"], delivery["subject"]) == (1, 200, f"job {job_id}")
    assert delivery["payload"] == body

    # The test button queues a `test` delivery, signed the same way.
    assert api.post(f"/webhooks/{made['id']}/test").status_code == 201
    wait_delivered(api, made["id"], count=2)
    assert receiver.requests[-1].headers["X-Trainfarm-Event"] == "test" and verify(
        secret, receiver.requests[-1]
    )

    # Another member finds neither the webhook nor its log, and cannot remove or test it.
    with user_client(api, "bob") as bob:
        assert bob.get("/webhooks").json() == []
        for method, path in (
            ("GET", f"/webhooks/{made['id']}"),
            ("GET", f"/webhooks/{made['id']}/deliveries"),
            ("DELETE", f"/webhooks/{made['id']}"),
            ("POST", f"/webhooks/{made['id']}/test"),
        ):
            answer = bob.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["field"] == "webhook_id"
        # Bob's own webhook is his to see; admins see everyone's.
        bobs = bob.post("/webhooks", json={"url": receiver.url}).json()
        assert [h["id"] for h in bob.get("/webhooks").json()] == [bobs["id"]]
    assert [h["id"] for h in api.get("/webhooks").json()] == [bobs["id"], made["id"]]
    assert api.get(f"/webhooks/{bobs['id']}").json()["owner"] == "bob"
    with user_client(api, "vera", role="viewer") as vera:
        assert vera.post("/webhooks", json={"url": receiver.url}).status_code == 403

    # Removing it takes its log along.
    assert api.delete(f"/webhooks/{made['id']}").status_code == 200
    assert api.get(f"/webhooks/{made['id']}/deliveries").status_code == 404
    trail = api.get("/audit", params={"action": "webhook"}).json()["items"]
    assert [(e["action"], e["target"]) for e in trail if e["actor"] != "bob"] == [
        (action, f"webhook {made['id']}") for action in ("webhook.delete", "webhook.test", "webhook.create")
    ]
    assert all(receiver.url not in json.dumps(e) for e in trail)  # a URL can be a credential


@SQLITE_ONLY
def test_a_500_is_retried_and_the_log_shows_it(api: httpx.Client, worker: object, receiver: Receiver) -> None:
    receiver.answers = [500]
    made = add_webhook(api, receiver.url)
    job_id = api.post("/jobs", json=QUICK_JOB).json()["id"]
    wait_status(api, job_id, {"succeeded"})
    [delivery] = wait_delivered(api, made["id"])
    assert delivery["attempts"] == 2 and delivery["last_code"] == 200
    assert "500" in delivery["last_error"]
    first, second = receiver.requests
    assert first.headers["X-Trainfarm-Delivery"] == second.headers["X-Trainfarm-Delivery"]  # one delivery
    assert first.body == second.body and verify(made["secret"], second)


@SQLITE_ONLY
def test_a_receiver_that_is_down_delays_nothing_and_gets_it_later(api: httpx.Client, worker: object) -> None:
    down = Receiver()  # its port is free: nothing listens yet
    made = add_webhook(api, down.url)
    job_id = api.post("/jobs", json=QUICK_JOB).json()["id"]
    assert wait_status(api, job_id, {"succeeded"})["status"] == "succeeded"

    def failed_twice() -> dict[str, Any] | None:
        items = deliveries(api, made["id"])
        return items[0] if items and items[0]["attempts"] >= 2 else None

    pending = wait_for(failed_twice, 30, what="two failed tries")
    assert isinstance(pending, dict) and pending["status"] == "pending"
    assert pending["last_error"] == "could not connect to the receiver" and pending["last_code"] is None
    down.start()
    try:
        [delivery] = wait_delivered(api, made["id"])
        assert delivery["attempts"] >= 3 and verify(made["secret"], down.requests[0])
        assert down.requests[0].json()["job"]["id"] == job_id
    finally:
        down.stop()


@SQLITE_ONLY
def test_slack_format_and_project_filter(api: httpx.Client, worker: object, receiver: Receiver) -> None:
    slack = add_webhook(api, receiver.url, format="slack", project="vision")
    other = add_webhook(api, receiver.url, project="nlp")
    job_id = api.post("/jobs", json={**QUICK_JOB, "project": "vision", "name": "cats"}).json()["id"]
    wait_status(api, job_id, {"succeeded"})
    wait_delivered(api, slack["id"])
    # Both webhooks' deliveries are made in one transaction: the other project's has none.
    assert deliveries(api, other["id"]) == []
    [request] = receiver.requests
    body = request.json()
    assert set(body) == {"text"}
    assert body["text"].startswith("<http") and f"job {job_id} (cats) succeeded" in body["text"]
    assert "project: vision" in body["text"]


@SQLITE_ONLY
def test_failed_and_cancelled_jobs_fire_their_events(
    api: httpx.Client, worker: object, receiver: Receiver
) -> None:
    made = add_webhook(api, receiver.url, events=["job.failed", "job.cancelled"])
    failing = api.post(
        "/jobs", json={"command": [PY, "-c", "raise SystemExit(3)"], "queue": "cpu", "max_retries": 0}
    )
    failed_id = failing.json()["id"]
    wait_status(api, failed_id, {"failed"})
    slow_id = api.post(
        "/jobs", json={"command": [PY, "-c", "import time; time.sleep(300)"], "queue": "cpu"}
    ).json()["id"]
    wait_status(api, slow_id, {"running"})
    assert api.post(f"/jobs/{slow_id}/cancel").status_code == 200
    cancelled_id = wait_status(api, slow_id, {"cancelled"})["id"]
    ok_id = api.post("/jobs", json=QUICK_JOB).json()["id"]
    wait_status(api, ok_id, {"succeeded"})  # not among the events asked for
    items = wait_delivered(api, made["id"], count=2)
    assert {(d["event"], d["subject"]) for d in items} == {
        ("job.failed", f"job {failed_id}"),
        ("job.cancelled", f"job {cancelled_id}"),
    }
    by_event = {r.headers["X-Trainfarm-Event"]: r.json()["job"] for r in receiver.requests}
    assert by_event["job.failed"]["status"] == "failed" and by_event["job.failed"]["error"]
    assert by_event["job.cancelled"]["status"] == "cancelled"


#: A sweep trial that needs no torch: reports `score` = x at each of two epochs.
SCORE_TRIAL = textwrap.dedent(
    """
    import json, os
    from worker.runtime import report
    hp = json.loads(os.environ["TRAINFARM_HYPERPARAMETERS"])
    for epoch in (1, 2):
        report({"score": hp["x"] * epoch / 2}, step=epoch, epoch=epoch)
    """
)


@SQLITE_ONLY
@pytest.mark.parametrize("settings", [{"sweep_interval": 0.2}], indirect=True)
def test_sweep_end_fires_sweep_ended(api: httpx.Client, worker: object, receiver: Receiver) -> None:
    made = add_webhook(api, receiver.url, events=["sweep.ended"])
    sweep = {
        "name": "scores",
        "base": {"command": [PY, "-c", SCORE_TRIAL], "queue": "cpu"},
        "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}},
        "objective": {"metric": "score", "direction": "maximize"},
        "sampler": "random",
        "pruner": "none",
        "budget": 2,
        "parallelism": 2,
        "seed": 5,
    }
    answer = api.post("/sweeps", json=sweep)
    assert answer.status_code == 201, answer.text
    sweep_id = answer.json()["id"]
    [delivery] = wait_delivered(api, made["id"], timeout=120)
    assert delivery["event"] == "sweep.ended" and delivery["subject"] == f"sweep {sweep_id}"
    ended = api.get(f"/sweeps/{sweep_id}").json()
    assert ended["status"] == "succeeded"
    [request] = receiver.requests  # the trials' own job ends were not asked for
    assert verify(made["secret"], request)
    body = request.json()["sweep"]
    assert (body["id"], body["name"], body["status"]) == (sweep_id, "scores", "succeeded")
    assert (body["best_trial"], body["best_job_id"], body["best_value"]) == (
        ended["best_trial"],
        ended["best_job_id"],
        ended["best_value"],
    )
    assert body["best_value"] is not None and body["counts"] == {"complete": 2}


@SQLITE_ONLY
def test_email_through_smtp(
    api: httpx.Client, smtp_server: tuple[Controller, Mailbox], settings: Settings
) -> None:
    _, mailbox = smtp_server
    made = add_webhook(api, "mailto:alice@example.com", events=["job.cancelled"])
    assert made["format"] == "email"
    # No worker: the job waits in its queue, and a cancel ends it at once.
    job_id = api.post("/jobs", json={**QUICK_JOB, "name": "mailme"}).json()["id"]
    api.post(f"/jobs/{job_id}/cancel")
    [delivery] = wait_delivered(api, made["id"])
    assert delivery["last_code"] == 250
    [message] = mailbox.messages
    assert message["To"] == "alice@example.com" and message["From"] == settings.smtp_from
    assert message["Subject"] == f"[trainfarm] job {job_id} (mailme) cancelled"
    assert message["X-Trainfarm-Delivery"] == str(delivery["id"])
    assert f"/#job-{job_id}" in message.get_payload(decode=True).decode()  # type: ignore[union-attr]


@SQLITE_ONLY
@pytest.mark.parametrize("settings", [{"webhook_allow_private": False}], indirect=True)
def test_bad_and_internal_urls_are_refused_naming_the_field(api: httpx.Client, receiver: Receiver) -> None:
    for url in (
        receiver.url,
        "http://169.254.169.254/latest/",
        "http://[::1]/",
        "ftp://example.com/",
        "mailto:x",
    ):
        answer = api.post("/webhooks", json={"url": url})
        assert answer.status_code == 422, (url, answer.text)
        assert answer.json()["field"] == "url"
    mismatch = api.post("/webhooks", json={"url": "mailto:a@example.com", "format": "json"})
    assert mismatch.status_code == 422 and mismatch.json()["field"] == "format"
    assert (
        api.post("/webhooks", json={"url": "https://x.example/", "events": ["job.started"]}).status_code
        == 422
    )
    assert api.get("/webhooks").json() == []


@SQLITE_ONLY
def test_cli_add_test_deliveries_remove(master: Any, receiver: Receiver) -> None:
    added = run_cli(master, "webhooks", "add", receiver.url, "--event", "job.failed")
    assert added.exit_code == 0, added.output
    assert "added webhook 1 (json, job.failed)" in added.output and "secret: whsec_" in added.output
    listed = run_cli(master, "webhooks", "list")
    assert listed.exit_code == 0 and receiver.url in listed.output and "whsec_" not in listed.output
    assert "queued test delivery" in run_cli(master, "webhooks", "test", "1").output
    wait_for(lambda: receiver.requests, 30, what="the test delivery")

    def shown_delivered() -> bool:
        return "delivered" in run_cli(master, "webhooks", "deliveries", "1").output

    wait_for(shown_delivered, 30, what="the delivery log to show it delivered")
    assert run_cli(master, "webhooks", "remove", "1").output.strip() == "removed webhook 1"
    gone = run_cli(master, "webhooks", "deliveries", "1")
    assert gone.exit_code == 1 and gone.output.startswith("error: webhook 1 not found")
    refused = run_cli(master, "webhooks", "add", "gopher://example.com/")
    assert refused.exit_code == 1 and refused.output.startswith("error: url refused")


@SQLITE_ONLY
def test_a_disabled_users_webhooks_fall_silent_until_enabled(
    api: httpx.Client, worker: object, receiver: Receiver
) -> None:
    with user_client(api, "dora") as dora:
        hook = add_webhook(dora, receiver.url)
        held = [PY, "-c", "import time; time.sleep(120)"]
        slow = dora.post("/jobs", json={"command": held, "queue": "cpu"}).json()["id"]
        wait_status(api, slow, {"running"})
        assert api.patch("/users/dora", json={"disabled": True}).status_code == 200
        assert api.post(f"/jobs/{slow}/cancel").status_code == 200
        wait_status(api, slow, {"cancelled"})
        # The admin's webhook, for a job that ends later: once its delivery is made, dora's job's
        # end has been through the outbox too (ends are taken in job order).
        mine = add_webhook(api, receiver.url)
        later = api.post("/jobs", json=QUICK_JOB).json()["id"]
        wait_status(api, later, {"succeeded"})
        wait_delivered(api, mine["id"])
        assert deliveries(api, hook["id"]) == []
        assert [r.json()["job"]["id"] for r in receiver.requests] == [later]

        # Enabled again, dora's webhook fires as before.
        assert api.patch("/users/dora", json={"disabled": False}).status_code == 200
        quick = dora.post("/jobs", json=QUICK_JOB).json()["id"]
        wait_status(api, quick, {"succeeded"})
        [delivery] = wait_delivered(api, hook["id"])
        assert delivery["subject"] == f"job {quick}"
