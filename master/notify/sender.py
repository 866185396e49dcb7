"""Sending the deliveries that are due, and recording each try in the delivery log.

A try is a POST (or an email) outside any database transaction: a receiver that hangs for
`webhook_timeout` holds no lock and delays nothing but this loop, and the tries of one round run
side by side (SENDERS at once), so one dead receiver does not hold up everyone else's news.

2xx is delivered; anything else (an error answer, a redirect, which is never followed, a refused
connection, a timeout) is tried again after a growing wait, until `webhook_max_attempts`. The
result is recorded after the try, so a master that dies in between sends that delivery again:
receivers drop repeats by its id.
"""

from __future__ import annotations

import json
import logging
import random
import smtplib
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from master.models import Webhook, WebhookDelivery, utcnow
from master.notify import signature
from master.notify.active import may_fire
from master.notify.backoff import retry_delay
from master.notify.email import build_message, send_email
from master.notify.payloads import slack_body
from master.notify.secrets import SecretBox, SecretUnreadable
from master.notify.targets import Resolver, Target, TargetRefused, check_url, system_resolver
from shared.settings import Settings

log = logging.getLogger(__name__)

#: Deliveries tried per round, oldest due first.
BATCH = 20
#: Tries made at once (threads); each waits on the network, not on the CPU.
SENDERS = 8
#: Longest `last_error` kept.
ERROR_MAX = 300


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    #: The receiver's HTTP status or the SMTP server's reply code, when it answered.
    code: int | None = None
    #: Why it was not delivered: short, and never the URL (a Slack URL is itself a secret).
    error: str | None = None


def body_bytes(fmt: str, body: dict[str, Any]) -> bytes:
    content = slack_body(body) if fmt == "slack" else body
    return json.dumps(content, separators=(",", ":"), sort_keys=True).encode()


def post(
    target: Target,
    content: bytes,
    headers: dict[str, str],
    timeout: float,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Response:
    """POST to the target, connecting to its vetted address when it has one (the name is not
    resolved again, so it cannot turn into an internal address between the check and the send);
    an https receiver's certificate is still checked against its name. `verify`: the system's CAs,
    or a context of others (tests)."""
    url = httpx.URL(target.url)
    extensions: dict[str, Any] = {}
    if target.pinned is not None:
        headers = {**headers, "Host": url.netloc.decode("ascii")}
        if url.scheme == "https":
            extensions["sni_hostname"] = target.host  # the certificate is checked against the name
        url = url.copy_with(host=target.pinned)
    # trust_env off: a proxy from the environment would send it somewhere the guard never saw.
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=verify) as client:
        return client.post(url, content=content, headers=headers, extensions=extensions)


def http_outcome(response: httpx.Response) -> Outcome:
    code = response.status_code
    if 200 <= code < 300:
        return Outcome(True, code)
    if 300 <= code < 400:
        return Outcome(False, code, f"HTTP {code}: redirects are not followed")
    return Outcome(False, code, f"HTTP {code} from the receiver")


class Sender:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        box: Callable[[], SecretBox],
        resolve: Resolver = system_resolver,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._engine = engine
        self._settings = settings
        #: Asked for at the first HTTP delivery: reading the master's key is not free.
        self._box = box
        self._resolve = resolve
        self._rand = rand
        self._pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="webhook-send")

    def send_due(self) -> int:
        """Try every delivery that is due (up to BATCH); how many were tried."""
        with Session(self._engine) as session:
            due = session.exec(
                select(WebhookDelivery)
                .where(WebhookDelivery.status == "pending", col(WebhookDelivery.next_at) <= utcnow())
                .order_by(col(WebhookDelivery.next_at), col(WebhookDelivery.id))
                .limit(BATCH)
            ).all()
            ids = {d.webhook_id for d in due}
            # A webhook disabled, or whose owner was, since its delivery was queued is left out: gone.
            chosen = select(Webhook).where(col(Webhook.id).in_(ids), may_fire())
            hooks = {h.id: h for h in session.exec(chosen)}
        # list(): waits for the whole round, and re-raises a try's unexpected error in the loop.
        list(self._pool.map(lambda d: self._record(d, self.attempt(d, hooks.get(d.webhook_id))), due))
        return len(due)

    def attempt(self, delivery: WebhookDelivery, hook: Webhook | None) -> Outcome:
        if hook is None or hook.disabled:
            return Outcome(False, error="the webhook or its owner is disabled, or it is gone")
        assert delivery.id is not None
        if hook.format == "email":
            return self._email(hook, delivery)
        try:
            target = check_url(hook.url, self._settings, self._resolve)
            assert target is not None, "an http(s) webhook has an http(s) URL"
            secret = self._box().open(hook.secret)
        except (TargetRefused, SecretUnreadable) as exc:
            return Outcome(False, error=f"not sent: {exc}"[:ERROR_MAX])
        content = body_bytes(hook.format, delivery.payload)
        now = int(utcnow().timestamp())
        headers = signature.headers(secret, now, content, delivery.event, delivery.id)
        timeout = self._settings.webhook_timeout
        try:
            return http_outcome(post(target, content, headers, timeout))
        except httpx.TimeoutException:
            return Outcome(False, error=f"no answer within {timeout:g}s")
        except httpx.ConnectError:
            return Outcome(False, error="could not connect to the receiver")
        except httpx.HTTPError as exc:
            return Outcome(False, error=f"request failed ({type(exc).__name__})")

    def _email(self, hook: Webhook, delivery: WebhookDelivery) -> Outcome:
        assert delivery.id is not None
        try:
            message = build_message(self._settings, hook.url, delivery.payload, delivery.id)
            send_email(self._settings, message)
        except TargetRefused as exc:
            return Outcome(False, error=f"not sent: {exc}"[:ERROR_MAX])
        except smtplib.SMTPResponseException as exc:
            return Outcome(False, exc.smtp_code, f"SMTP {exc.smtp_code} from the mail server")
        except (smtplib.SMTPException, OSError) as exc:
            return Outcome(False, error=f"could not reach the mail server ({type(exc).__name__})")
        return Outcome(True, 250)

    def _record(self, tried: WebhookDelivery, outcome: Outcome) -> None:
        now = utcnow()
        with Session(self._engine) as session:
            row = session.get(WebhookDelivery, tried.id)
            if row is None:  # its webhook was removed during the try
                return
            row.attempts += 1
            row.last_code = outcome.code
            if outcome.delivered:
                # last_error stays: the log then shows why it took more than one try.
                row.status, row.delivered_at = "delivered", now
            else:
                row.last_error = outcome.error
                if row.attempts >= self._settings.webhook_max_attempts:
                    row.status = "failed"
                else:
                    row.next_at = next_try(now, row.attempts, self._settings.webhook_retry_base, self._rand)
            session.add(row)
            session.commit()
            log.info("webhook delivery %s: %s after %d tries", row.id, row.status, row.attempts)


def next_try(now: datetime, attempts: int, base: float, rand: Callable[[], float]) -> datetime:
    return now + timedelta(seconds=retry_delay(attempts, base, rand))
