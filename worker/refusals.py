"""Task messages a worker refused to run: logged, counted where the master's /metrics reads them,
and dropped (acknowledged), so a forged message is neither run nor retried."""

from __future__ import annotations

import logging

import redis

from shared.settings import Settings
from shared.signing import MessageRefused, Verifier, worker_public_key
from shared.streams import REFUSED_MESSAGES_KEY

log = logging.getLogger(__name__)


def load_verifier(settings: Settings) -> Verifier:
    """The verifier of this worker; a worker without the master's public key cannot run anything,
    so it says what to set instead of starting."""
    key = worker_public_key(settings)
    if key is None:
        raise SystemExit(
            "trainfarm worker: no signing public key: set TRAINFARM_SIGNING_PUBLIC_KEY to the master's "
            "(`trainfarm admin signing-key` on the master prints it); workers run only messages the "
            "master signed"
        )
    return Verifier(key, settings.message_max_age)


def record_refusal(client: redis.Redis, refused: MessageRefused, task_id: str | None, node: str) -> None:
    """Log and count one refused message; Redis away only costs the count."""
    log.warning(
        "refused task message %s on %s: %s (dropped, not run)", task_id or "without id", node, refused
    )
    try:
        client.hincrby(REFUSED_MESSAGES_KEY, refused.reason.value, 1)
    except redis.RedisError as exc:
        log.warning("could not count the refused message: %s", exc)
