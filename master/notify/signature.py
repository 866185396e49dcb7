"""Signing deliveries: HMAC-SHA256 over "<timestamp>.<body>" with the webhook's secret.

A receiver verifies a delivery by recomputing the HMAC over the `X-Trainfarm-Timestamp` header, a
dot and the raw body bytes, comparing it with `X-Trainfarm-Signature` (minus `sha256=`) in constant
time, and refusing timestamps more than a few minutes old (a replayed capture). Deliveries are sent
at least once: a receiver drops repeats by `X-Trainfarm-Delivery`.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Trainfarm-Signature"
TIMESTAMP_HEADER = "X-Trainfarm-Timestamp"
EVENT_HEADER = "X-Trainfarm-Event"
DELIVERY_HEADER = "X-Trainfarm-Delivery"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `sha256=<hex>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, now: float, tolerance: float = 300
) -> bool:
    """What a receiver does (and the tests do): a valid signature over a recent timestamp."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs(now - stamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


def headers(secret: str, timestamp: int, body: bytes, event: str, delivery_id: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: event,
        DELIVERY_HEADER: str(delivery_id),
    }
