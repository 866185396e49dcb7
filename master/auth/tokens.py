"""Opaque API tokens: `tf_` and 43 random URL-safe characters, stored only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

PREFIX = "tf_"
#: Characters of a token kept in clear so its owner can tell it apart in `trainfarm tokens list`.
SHOWN = len(PREFIX) + 6


@dataclass(frozen=True)
class NewToken:
    #: The token itself: handed to its owner once, never stored.
    plain: str
    digest: str
    prefix: str


def digest(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def make_token() -> NewToken:
    plain = PREFIX + secrets.token_urlsafe(32)
    return NewToken(plain=plain, digest=digest(plain), prefix=plain[:SHOWN])


def looks_like_token(value: str) -> bool:
    return value.startswith(PREFIX) and 16 <= len(value) <= 128
