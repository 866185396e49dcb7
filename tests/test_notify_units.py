"""Fast tests of the notifier's decisions: payloads, signatures, the retry schedule, the SSRF
guard and secret encryption; no service runs."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from master.models import Job, Sweep, User, Webhook, WebhookDelivery
from master.notify import outbox, signature
from master.notify.backoff import MAX_DELAY, retry_delay
from master.notify.payloads import EVENTS, job_body, slack_body, summary, sweep_body
from master.notify.secrets import PREFIX, SecretBox, SecretUnreadable, new_secret
from master.notify.sender import Sender, body_bytes, http_outcome, post
from master.notify.targets import Target, TargetRefused, check_url, is_internal, system_resolver
from shared.roles import Role
from shared.settings import Settings
from shared.signing import new_private_key
from shared.status import JobStatus
from tests.conftest import wait_for

API = "https://farm.example.com"


def guard_settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(data_dir=tmp_path, **extra)  # type: ignore[arg-type]


def ended_job(**extra: object) -> Job:
    values: dict[str, object] = {
        "id": 12,
        "name": "digits",
        "queue": "cpu",
        "owner": "alice",
        "project": "vision",
        "tags": ["baseline"],
        "status": JobStatus.FAILED,
        "spec": {},
        "error": "ValueError: lr must be positive\nTraceback (most recent call last): ...",
        "started_at": datetime(2026, 12, 3, 10, 0, tzinfo=UTC),
        "finished_at": datetime(2026, 12, 3, 10, 5, tzinfo=UTC),
        "metrics": {"val_acc": 0.9512, "epoch": 3},
    }
    return Job(**{**values, **extra})  # type: ignore[arg-type]


# Payloads ---------------------------------------------------------------------------------------


def test_job_body_carries_what_a_receiver_needs() -> None:
    body = job_body(ended_job(), "job.failed", API)
    assert body["event"] == "job.failed"
    job = body["job"]
    assert (job["id"], job["name"], job["owner"], job["project"], job["tags"]) == (
        12,
        "digits",
        "alice",
        "vision",
        ["baseline"],
    )
    assert job["status"] == "failed"
    assert job["error"] == "ValueError: lr must be positive"  # the first line only
    assert job["started_at"] == "2026-12-03T10:00:00+00:00"
    assert job["finished_at"] == "2026-12-03T10:05:00+00:00"
    assert job["metrics"] == {"val_acc": 0.9512, "epoch": 3}
    assert job["url"] == f"{API}/#job-12"
    json.dumps(body)  # storable as the delivery's payload


def test_sweep_body_and_summary() -> None:
    sweep = Sweep(
        id=3, name="lr-search", owner="alice", project="vision", status="succeeded", spec={}, best_trial=4,
        best_job_id=40, best_value=0.125,
    )  # fmt: skip
    body = sweep_body(sweep, {"complete": 5, "pruned": 2}, API)
    assert body["event"] == "sweep.ended"
    assert body["sweep"]["best_trial"] == 4 and body["sweep"]["best_value"] == 0.125
    assert body["sweep"]["counts"] == {"complete": 5, "pruned": 2}
    assert body["sweep"]["url"] == f"{API}/#sweep-3"
    assert summary(body) == "sweep 3 (lr-search) succeeded, best trial 4 = 0.125"


def test_slack_body_links_the_job_and_escapes_markup() -> None:
    body = job_body(ended_job(name=None, error="x < y & z"), "job.failed", API)
    text = slack_body(body)["text"]
    assert text.startswith(f"<{API}/#job-12|job 12 failed: x &lt; y &amp; z>")
    assert "project: vision" in text and "val_acc=0.9512" in text
    assert body_bytes("slack", body) == json.dumps({"text": text}, separators=(",", ":")).encode()


# Signatures -------------------------------------------------------------------------------------


def test_signature_verifies_and_rejects_tampering() -> None:
    secret, body = new_secret(), b'{"event":"job.succeeded"}'
    headers = signature.headers(secret, 1_800_000_000, body, "job.succeeded", 7)
    sig = headers[signature.SIGNATURE_HEADER]
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert headers[signature.DELIVERY_HEADER] == "7" and headers[signature.EVENT_HEADER] == "job.succeeded"
    now = 1_800_000_010
    assert signature.verify(secret, "1800000000", body, sig, now)
    assert not signature.verify(secret, "1800000000", body + b" ", sig, now)
    assert not signature.verify(new_secret(), "1800000000", body, sig, now)
    assert not signature.verify(secret, "1800000001", body, sig, now)  # the timestamp is signed too
    assert not signature.verify(secret, "1800000000", body, sig, now + 3600)  # too old: a replay


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"whsec_k", b"100.{}", hashlib.sha256).hexdigest()
    assert signature.sign("whsec_k", 100, b"{}") == f"sha256={expected}"


# Retry schedule ---------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_and_caps_at_an_hour() -> None:
    assert [retry_delay(n, 5.0, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(20, 5.0, rand=lambda: 0.0) == MAX_DELAY
    # Jitter only shortens, by at most a quarter: never past the cap, never below 3/4 of it.
    assert retry_delay(3, 5.0, rand=lambda: 1.0) == 15.0
    assert 0.75 * MAX_DELAY <= retry_delay(30, 5.0) <= MAX_DELAY
    assert retry_delay(10_000, 5.0, rand=lambda: 0.0) == MAX_DELAY  # no overflow


def test_only_2xx_is_delivered_and_redirects_are_not_followed() -> None:
    import httpx

    assert http_outcome(httpx.Response(204)).delivered
    failed = http_outcome(httpx.Response(500))
    assert not failed.delivered and failed.code == 500 and failed.error == "HTTP 500 from the receiver"
    moved = http_outcome(httpx.Response(302))
    assert not moved.delivered and "redirects are not followed" in (moved.error or "")


# SSRF guard -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped: loopback in disguise
        "http://[::]/",
        "http://[ff02::1]/",
        "http://localhost:8000/",  # a name that resolves to 127.0.0.1
    ],
)
def test_internal_targets_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(TargetRefused, match="inside the farm's network"):
        check_url(url, guard_settings(tmp_path))


def test_a_name_resolving_inside_is_refused(tmp_path: Path) -> None:
    def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"]  # one public address is not enough: all are checked

    with pytest.raises(TargetRefused):
        check_url("https://hooks.example.com/x", guard_settings(tmp_path), rebinding)


def test_public_targets_are_pinned_to_the_vetted_address(tmp_path: Path) -> None:
    target = check_url(
        "https://hooks.example.com/x", guard_settings(tmp_path), lambda host, port: ["93.184.216.34"]
    )
    assert target is not None and target.pinned == "93.184.216.34" and target.host == "hooks.example.com"
    literal = check_url("http://[2606:4700::1111]/", guard_settings(tmp_path))
    assert literal is not None and literal.pinned == "2606:4700::1111"


def test_allow_private_lets_loopback_through_unpinned(tmp_path: Path) -> None:
    target = check_url("http://127.0.0.1:9/", guard_settings(tmp_path, webhook_allow_private=True))
    assert target is not None and target.pinned is None


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "file:///etc/passwd", "gopher://x/", "http:///nohost", "https://u:p@example.com/"],
)
def test_other_schemes_and_shapes_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(TargetRefused):
        check_url(url, guard_settings(tmp_path, webhook_allow_private=True))


def test_mailto_needs_smtp_and_one_plain_address(tmp_path: Path) -> None:
    with pytest.raises(TargetRefused, match="SMTP"):
        check_url("mailto:alice@example.com", guard_settings(tmp_path))
    mail = guard_settings(tmp_path, smtp_host="smtp.example.com")
    assert check_url("mailto:alice@example.com", mail) is None
    for bad in (
        "mailto:",
        "mailto:alice",
        "mailto:a@b.c,b@c.d",
        "mailto:a@b.c?cc=x@y.z",
        "mailto:a@b.c\r\nBcc: x",
    ):
        with pytest.raises(TargetRefused):
            check_url(bad, mail)


def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(TargetRefused, match="does not resolve"):
        system_resolver("no-such-host.invalid", 443)


def test_is_internal_knows_public_addresses() -> None:
    import ipaddress

    assert not is_internal(ipaddress.ip_address("93.184.216.34"))
    assert not is_internal(ipaddress.ip_address("2606:4700::1111"))
    assert is_internal(ipaddress.ip_address("100.64.0.1"))  # carrier-grade NAT: not reachable from outside


# Secrets ----------------------------------------------------------------------------------------


def test_secret_round_trip_and_another_key_cannot_read_it() -> None:
    secret = new_secret()
    assert secret.startswith(PREFIX) and len(secret) > len(PREFIX) + 40
    key = new_private_key()
    sealed = SecretBox(key).seal(secret)
    assert secret not in sealed
    assert SecretBox(key).open(sealed) == secret  # derived again from the same key: same box
    with pytest.raises(SecretUnreadable):
        SecretBox(new_private_key()).open(sealed)
    assert "whsec" not in repr(SecretBox(key))


# Outbox -----------------------------------------------------------------------------------------


def test_outbox_queues_matching_webhooks_once(engine: Engine) -> None:
    with Session(engine) as session:
        hooks = [
            Webhook(owner="alice", url="https://a.example/", events=list(EVENTS)),
            Webhook(owner="alice", project="vision", url="https://b.example/", events=["job.failed"]),
            Webhook(owner="alice", project="nlp", url="https://c.example/", events=list(EVENTS)),
            Webhook(owner="alice", url="https://d.example/", events=["job.succeeded"]),
            Webhook(owner="bob", url="https://e.example/", events=list(EVENTS)),
        ]
        session.add_all(hooks)
        session.add(ended_job(id=None))
        session.add(Job(queue="cpu", owner="alice", spec={}, status=JobStatus.RUNNING))
        session.commit()
        assert outbox.collect(session, API) == 2
        assert outbox.collect(session, API) == 0  # announced once
        rows = session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.webhook_id))).all()
        assert [r.webhook_id for r in rows] == [hooks[0].id, hooks[1].id]
        assert {r.event for r in rows} == {"job.failed"} and rows[0].payload["job"]["project"] == "vision"
        running = session.exec(select(Job).where(Job.status == JobStatus.RUNNING)).one()
        assert not running.notified  # announced when it ends, not before


@pytest.mark.parametrize(
    ("status", "event"),
    [
        (JobStatus.SUCCEEDED, "job.succeeded"),
        (JobStatus.FAILED, "job.failed"),
        (JobStatus.CANCELLED, "job.cancelled"),
        (JobStatus.PRUNED, "job.pruned"),
    ],
)
def test_every_end_has_its_event(engine: Engine, status: JobStatus, event: str) -> None:
    with Session(engine) as session:
        session.add(Webhook(owner="alice", url="https://a.example/", events=list(EVENTS)))
        session.add(ended_job(id=None, status=status))
        session.commit()
        assert outbox.collect(session, API) == 1
        delivery = session.exec(select(WebhookDelivery)).one()
        assert delivery.event == event and delivery.payload["job"]["status"] == status.value


def test_outbox_skips_a_job_another_master_claimed(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Webhook(owner="alice", url="https://a.example/", events=list(EVENTS)))
        session.add(ended_job(id=None))
        session.commit()
        with Session(engine) as other:
            assert outbox._claim(other, Job, 1)
            other.commit()
        assert outbox.collect(session, API) == 0
        assert session.exec(select(WebhookDelivery)).all() == []


def test_system_resolver_resolves_localhost() -> None:
    assert {"127.0.0.1", "::1"} & set(system_resolver("localhost", 80))


# Sending ----------------------------------------------------------------------------------------


def test_a_delivery_is_retried_then_failed_after_max_attempts(engine: Engine, tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    box = SecretBox(new_private_key())
    settings = guard_settings(
        tmp_path, webhook_allow_private=True, webhook_max_attempts=3, webhook_retry_base=0.01
    )
    with Session(engine) as session:
        hook = Webhook(
            owner="alice", url=f"http://127.0.0.1:{port}/", events=list(EVENTS), secret=box.seal("k")
        )
        session.add(hook)
        session.flush()
        assert hook.id is not None
        session.add(
            WebhookDelivery(webhook_id=hook.id, event="test", subject="webhook 1", payload={"event": "test"})
        )
        session.commit()
    sender = Sender(engine, settings, lambda: box)
    try:
        tries = []

        def ended() -> bool:
            sender.send_due()
            with Session(engine) as session:
                row = session.exec(select(WebhookDelivery)).one()
            tries.append(row.attempts)
            return row.status != "pending"

        wait_for(ended, 10, interval=0.01, what="the delivery to run out of tries")
    finally:
        closed.close()
    with Session(engine) as session:
        row = session.exec(select(WebhookDelivery)).one()
    assert (row.status, row.attempts, row.last_code) == ("failed", 3, None)
    assert row.last_error == "could not connect to the receiver"
    assert sorted(set(tries)) == [1, 2, 3]  # tried again only once due, up to the limit


def test_send_time_guard_refuses_a_webhook_that_now_points_inside(engine: Engine, tmp_path: Path) -> None:
    box = SecretBox(new_private_key())
    hook = Webhook(
        id=1, owner="alice", url="https://hooks.example.com/x", events=list(EVENTS), secret=box.seal("k")
    )
    delivery = WebhookDelivery(
        id=5, webhook_id=1, event="test", subject="webhook 1", payload={"event": "test"}
    )
    sender = Sender(engine, guard_settings(tmp_path), lambda: box, resolve=lambda host, port: ["10.1.2.3"])
    outcome = sender.attempt(delivery, hook)
    assert not outcome.delivered and outcome.code is None
    assert outcome.error is not None and "inside the farm's network" in outcome.error
    assert "hooks.example.com" not in outcome.error  # errors never carry the URL


def test_a_pinned_post_connects_to_the_vetted_address_with_the_name_as_host() -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers["Host"])
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        # The name does not resolve at all: only the pinned address can have been used.
        target = Target(f"http://receiver.invalid:{port}/hook", "receiver.invalid", "127.0.0.1")
        assert post(target, b"{}", {}, timeout=5).status_code == 204
        assert seen == [f"receiver.invalid:{port}"]
    finally:
        server.server_close()


def self_signed(name: str, directory: Path) -> tuple[Path, Path, str]:
    """A certificate for `name` only (no IP address in it), its key, and the certificate as PEM."""
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_text(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, pem


def test_a_pinned_https_post_checks_the_certificate_against_the_name(tmp_path: Path) -> None:
    cert, key, pem = self_signed("receiver.test", tmp_path)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    trusting = ssl.create_default_context(cadata=pem)
    try:
        # Connected to 127.0.0.1, yet verified as receiver.test: the certificate names only that.
        named = Target(f"https://receiver.test:{port}/hook", "receiver.test", "127.0.0.1")
        assert post(named, b"{}", {}, timeout=5, verify=trusting).status_code == 200
        # A certificate for another name is still refused.
        other = Target(f"https://other.test:{port}/hook", "other.test", "127.0.0.1")
        with pytest.raises(httpx.ConnectError, match="certificate"):
            post(other, b"{}", {}, timeout=5, verify=trusting)
    finally:
        server.shutdown()
        server.server_close()


def test_a_delivery_queued_before_its_owner_was_disabled_is_not_sent(engine: Engine, tmp_path: Path) -> None:
    box = SecretBox(new_private_key())
    settings = guard_settings(tmp_path, webhook_allow_private=True, webhook_max_attempts=5)
    with Session(engine) as session:
        session.add(User(name="alice", role=Role.MEMBER, password_hash="-", disabled=True))
        # Were it sent, it would meet a port nobody listens on, and say so.
        hook = Webhook(owner="alice", url="http://127.0.0.1:9/", events=list(EVENTS), secret=box.seal("k"))
        session.add(hook)
        session.flush()
        session.add(WebhookDelivery(webhook_id=hook.id, event="test", subject="webhook 1", payload={}))  # type: ignore[arg-type]
        session.commit()
    assert Sender(engine, settings, lambda: box).send_due() == 1
    with Session(engine) as session:
        row = session.exec(select(WebhookDelivery)).one()
    assert (row.status, row.attempts) == ("pending", 1)  # tried again later: she may be enabled
    assert row.last_error == "the webhook or its owner is disabled, or it is gone"
