"""Webhook secrets: made by the master, shown once, stored encrypted with a key only the master has.

The encryption key is derived (HKDF-SHA256) from the master's Ed25519 signing key rather than kept
as one more secret to configure and back up: whoever can read the database alone cannot sign
deliveries as the farm. A master whose signing key changes can no longer read the secrets; its
deliveries then fail with a plain reason, and the owner makes the webhook again.
"""

from __future__ import annotations

import base64
import secrets
import threading

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.settings import Settings
from shared.signing import master_private_key

#: What a webhook secret starts with, so one found in a config file is recognised for what it is.
PREFIX = "whsec_"
#: HKDF's `info`: this key encrypts webhook secrets and nothing else the signing key may derive.
PURPOSE = b"trainfarm webhook secrets v1"


class SecretUnreadable(Exception):
    """A stored secret this master cannot decrypt (its signing key changed since it was made)."""


def new_secret() -> str:
    """32 random bytes, URL-safe base64, prefixed."""
    return PREFIX + secrets.token_urlsafe(32)


class SecretBox:
    """Encrypts and decrypts webhook secrets with a Fernet key derived from the master's key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(raw)
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                "the webhook's secret cannot be read: the master's signing key changed"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<hidden>)"


_boxes: dict[tuple[str | None, str], SecretBox] = {}
_lock = threading.Lock()


def secret_box(settings: Settings) -> SecretBox:
    """The box for this master's key, derived once per key (reading the key writes its public half)."""
    given = settings.signing_key.get_secret_value() if settings.signing_key is not None else None
    where = (given, str(settings.signing_key_path))
    with _lock:
        box = _boxes.get(where)
        if box is None:
            box = _boxes[where] = SecretBox(master_private_key(settings))
        return box
