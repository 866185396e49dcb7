"""The dashboard's session cookie: a session token, signed and time-stamped (itsdangerous).

The browser's `EventSource` (the live log) cannot send an Authorization header, so the dashboard
authenticates with a cookie. It holds a token of kind `session`, which is revoked at logout like any
other; the signature adds an expiry the cookie carries itself, and keeps anything but a token this
master made from ever reaching the database lookup.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from shared.errors import Unauthorized
from shared.settings import Settings

COOKIE = "tf_session"


class SessionCookies:
    def __init__(self, secret: str, ttl: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="trainfarm-dashboard-session")
        self.ttl = ttl

    def seal(self, token: str) -> str:
        return self._serializer.dumps(token)

    def open(self, cookie: str) -> str:
        """The token inside a cookie; 401 for one that is forged, damaged or too old."""
        try:
            token = self._serializer.loads(cookie, max_age=self.ttl)
        except SignatureExpired:
            raise Unauthorized("the dashboard session expired; log in again") from None
        except BadSignature:
            raise Unauthorized("the session cookie is not valid; log in again") from None
        if not isinstance(token, str):
            raise Unauthorized("the session cookie is not valid; log in again")
        return token


def session_secret(settings: Settings) -> str:
    """The configured key, or in development one made once and kept in the data directory."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value()
    path = settings.data_dir / "session.key"
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(48))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start, and only if nobody else made it first (two masters starting).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
