"""Signed task messages: only the master can make a worker run something.

Anyone who reaches Redis can push a Celery message, so a worker trusts a message only once it has
checked the master's Ed25519 signature over exactly the bytes it then parses and runs: job, attempt,
the full spec, the datasets and when it was issued. The master alone holds the private key; workers
hold the public key, so a node (or a leaked Redis password) can sign nothing.

Why not Celery's own message signing (`task_serializer="auth"`): every party that sends then needs
a private key and a certificate the others trust, and workers do send (a job put back on its queue
when the node's GPUs are busy), so any worker's key could sign a job for every other node. Here a
re-send forwards the master's signed message as it is, and nothing but the master can make one.
It also has no notion of a message's age, which replay protection needs.

Replays: a copy of a genuine message (captured from Redis and pushed again) names an attempt that
already ran, whose lease is then marked `done` or `lost` for `leases.ENDED_TTL_SECONDS`; messages
expire after `message_max_age`, as long, so every replay meets one of the two.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.private_files import write_private
from shared.schemas import TaskMessage
from shared.settings import Settings

#: Signed before the payload, so a signature over a task can never pass for one over anything else
#: the key might sign one day.
DOMAIN = b"trainfarm task message v1\n"
#: Where a master writes its public key for workers on the same machine (standalone, test farms).
PUBLIC_KEY_FILE = "signing.pub"
#: A task message is a job spec with its datasets: far below this.
MAX_PAYLOAD_CHARS = 1_000_000
#: A message issued this far in the future (clock skew between master and worker) is still taken.
CLOCK_SKEW_SECONDS = 300


class SignedTask(BaseModel):
    """The one argument of the run-attempt task: the master's message as JSON, and its signature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    payload: str = Field(max_length=MAX_PAYLOAD_CHARS)
    #: Base64 of the 64-byte Ed25519 signature over DOMAIN + payload (UTF-8).
    signature: str = Field(max_length=128)
    #: Which key signed it (`key_id`), so a worker can say "signed by another master" plainly.
    key_id: str = Field(max_length=64)


class Refusal(StrEnum):
    """Why a worker refused a message; the label of trainfarm_messages_refused_total."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    OTHER_KEY = "other_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    REPLAYED = "replayed"


class MessageRefused(Exception):
    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# Keys -----------------------------------------------------------------------------------------


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_text(key: Ed25519PrivateKey) -> str:
    """The key as the `signing_key` setting takes it: base64 of its 32 raw bytes."""
    return base64.b64encode(key.private_bytes_raw()).decode()


def public_key_text(key: Ed25519PublicKey) -> str:
    """The public key as the `signing_public_key` setting takes it: base64 of its 32 raw bytes."""
    return base64.b64encode(key.public_bytes_raw()).decode()


def _raw_key(text: str, setting: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{setting} is not an Ed25519 key (base64 of 32 bytes)")
    return raw


def parse_private_key(text: str, setting: str = "TRAINFARM_SIGNING_KEY") -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_raw_key(text, setting))


def parse_public_key(text: str, setting: str = "TRAINFARM_SIGNING_PUBLIC_KEY") -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_raw_key(text, setting))


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key, shown in logs and carried by every message."""
    return hashlib.sha256(key.public_bytes_raw()).hexdigest()[:16]


def master_private_key(settings: Settings) -> Ed25519PrivateKey:
    """The master's key: the `signing_key` setting, else `signing_key_file`, made on first use
    (owner-only; two masters starting at once agree on the first one written). Also writes the
    public key beside the data dir, for workers on this machine."""
    if settings.signing_key is not None:
        key = parse_private_key(settings.signing_key.get_secret_value())
    else:
        key = _read_or_create(settings.signing_key_path)
    _write_public(settings.data_dir / PUBLIC_KEY_FILE, key.public_key())
    return key


def _read_or_create(path: Path) -> Ed25519PrivateKey:
    try:
        return parse_private_key(path.read_text(), f"the signing key file {path}")
    except FileNotFoundError:
        pass
    key = new_private_key()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    write_private(tmp, private_key_text(key) + "\n")
    try:
        os.link(tmp, path)  # fails if another master made one meanwhile: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return parse_private_key(path.read_text(), f"the signing key file {path}")


def _write_public(path: Path, key: Ed25519PublicKey) -> None:
    text = public_key_text(key) + "\n"
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def worker_public_key(settings: Settings) -> Ed25519PublicKey | None:
    """The key a worker verifies with: the `signing_public_key` setting, else the file a master on
    this machine wrote; None when there is neither (the worker then refuses to start)."""
    text = settings.signing_public_key
    if text is None:
        try:
            text = (settings.data_dir / PUBLIC_KEY_FILE).read_text()
        except OSError:
            return None
    return parse_public_key(text)


# Messages -------------------------------------------------------------------------------------


class Signer:
    """The master's side: a message becomes a SignedTask."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, message: TaskMessage) -> SignedTask:
        payload = message.model_dump_json()
        signature = self._key.sign(DOMAIN + payload.encode())
        return SignedTask(payload=payload, signature=base64.b64encode(signature).decode(), key_id=self.key_id)


class Verifier:
    """The worker's side: a task's argument becomes the TaskMessage the master signed, or is refused."""

    def __init__(self, key: Ed25519PublicKey, max_age: float) -> None:
        self._key = key
        self.key_id = key_id(key)
        self.max_age = max_age

    def verify(self, raw: Any, now: float | None = None) -> TaskMessage:
        if not isinstance(raw, dict) or "signature" not in raw:
            raise MessageRefused(Refusal.UNSIGNED, "the message carries no signature")
        try:
            signed = SignedTask.model_validate(raw)
        except ValidationError as exc:
            raise MessageRefused(
                Refusal.MALFORMED, f"not a signed task: {exc.error_count()} errors"
            ) from None
        if signed.key_id != self.key_id:
            raise MessageRefused(
                Refusal.OTHER_KEY, f"signed by key {signed.key_id[:16]!r}, this worker trusts {self.key_id}"
            )
        try:
            signature = base64.b64decode(signed.signature, validate=True)
            self._key.verify(signature, DOMAIN + signed.payload.encode())
        except (InvalidSignature, binascii.Error, ValueError):
            raise MessageRefused(Refusal.BAD_SIGNATURE, "the signature does not match the message") from None
        try:
            message = TaskMessage.model_validate_json(signed.payload)
        except ValidationError as exc:  # signed by our master, yet not a message this worker knows
            raise MessageRefused(
                Refusal.MALFORMED, f"signed, but not a task this worker can read ({exc.error_count()} errors)"
            ) from None
        age = (time.time() if now is None else now) - message.issued_at
        if age > self.max_age or age < -CLOCK_SKEW_SECONDS:
            raise MessageRefused(Refusal.EXPIRED, f"issued {age:.0f} s ago; valid for {self.max_age:.0f} s")
        return message
