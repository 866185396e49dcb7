"""Password hashing: argon2 through pwdlib, never a password in clear anywhere."""

from __future__ import annotations

from functools import lru_cache

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

#: Shortest password accepted; a lab's farm runs code on GPUs, so no "1234".
MIN_PASSWORD_LENGTH = 8


@lru_cache
def _hasher() -> PasswordHash:
    return PasswordHash((Argon2Hasher(),))


@lru_cache
def _decoy() -> str:
    # Verified against when the user does not exist, so that a wrong name costs the same argon2
    # run as a wrong password and timing tells an attacker nothing about who has an account.
    return _hasher().hash("trainfarm-decoy-password")


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` matches `stored`; with no stored hash, the same work and False."""
    ok = _hasher().verify(password, stored or _decoy())
    return ok and stored is not None


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "a password has at most 1024 characters"
    return None
