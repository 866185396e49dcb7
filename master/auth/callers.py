"""Who is calling: resolved once per request from a bearer token or the dashboard's cookie."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, Select, bindparam, select, update
from sqlmodel import col
from starlette.requests import HTTPConnection

from master.auth import tokens
from master.auth.rate_limits import RateLimits
from master.auth.sessions import COOKIE, SessionCookies
from master.models import ApiToken, User, as_utc, utcnow
from shared.errors import Forbidden, Unauthorized
from shared.roles import Role

log = logging.getLogger("trainfarm.master.auth")

#: `last_used_at` is written at most this often per token: a write per request would cost more
#: than the lookup it records.
LAST_USED_EVERY = timedelta(minutes=1)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NO_CREDENTIALS = (
    "not authenticated: send 'Authorization: Bearer <token>' (trainfarm login, or POST /api/auth/login) "
    "or log in to the dashboard"
)


@dataclass(frozen=True)
class Caller:
    #: The user's name; None only while authentication is off.
    name: str | None
    role: Role
    #: The token (or dashboard session) the request came with; None while authentication is off.
    token_id: int | None
    #: True when the request was authenticated by the dashboard's cookie.
    by_cookie: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


#: What every request is while `TRAINFARM_AUTH_ENABLED=false`.
NOBODY = Caller(name=None, role=Role.ADMIN, token_id=None)

#: The token and its user in one indexed query, as plain columns on a pooled connection: an ORM
#: session and two mapped objects per request were most of what checking a caller cost
#: (bench/submit.py, "auth vs without").
TOKEN_LOOKUP: Select[*tuple[Any, ...]] = (
    select(
        col(ApiToken.id),
        col(ApiToken.name),
        col(ApiToken.prefix),
        col(ApiToken.kind),
        col(ApiToken.revoked_at),
        col(ApiToken.expires_at),
        col(ApiToken.last_used_at),
        col(User.name).label("user_name"),
        col(User.role),
        col(User.disabled),
    )
    .join(User, col(User.id) == col(ApiToken.user_id))
    .where(col(ApiToken.digest) == bindparam("digest"))
)


class Authenticator:
    """Turns a request's credentials into a `Caller`, or a 401 that says what is wrong.

    One indexed lookup of the token's SHA-256 per request, joined with its user, so a disabled user
    or a revoked token stops working at once on every master process.
    """

    def __init__(
        self, engine: Engine, cookies: SessionCookies, limits: RateLimits, metrics_token: str | None
    ) -> None:
        self._engine = engine
        self.cookies = cookies
        self.limits = limits
        self._metrics_token = metrics_token

    def caller(self, conn: HTTPConnection) -> Caller:
        plain, by_cookie = self._credentials(conn)
        caller = self._lookup(plain, by_cookie)
        if conn.scope.get("method", "GET") not in SAFE_METHODS:
            check_origin(conn, required=by_cookie)
            self.limits.count_mutation(f"token:{caller.token_id}")
        return caller

    def is_scraper(self, conn: HTTPConnection) -> bool:
        """Whether the request carries the Prometheus scrape token (compared in constant time)."""
        header = conn.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if self._metrics_token is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._metrics_token.encode())

    def _credentials(self, conn: HTTPConnection) -> tuple[str, bool]:
        header = conn.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <token>'")
            return value.strip(), False
        cookie = conn.cookies.get(COOKIE)
        if cookie:
            return self.cookies.open(cookie), True
        raise Unauthorized(NO_CREDENTIALS)

    def _lookup(self, plain: str, by_cookie: bool) -> Caller:
        if not tokens.looks_like_token(plain):
            raise Unauthorized("that is not a trainfarm token (they start with 'tf_')")
        now = utcnow()
        with self._engine.connect() as conn:
            row = conn.execute(TOKEN_LOOKUP, {"digest": tokens.digest(plain)}).first()
            if row is None:
                raise Unauthorized("unknown token: it was never issued or its user was removed")
            if row.revoked_at is not None:
                raise Unauthorized(f"token '{row.name}' ({row.prefix}…) was revoked")
            if row.expires_at is not None and as_utc(row.expires_at) <= now:
                raise Unauthorized(
                    f"token '{row.name}' ({row.prefix}…) expired at {row.expires_at:%Y-%m-%d %H:%M} UTC"
                )
            if row.disabled:
                raise Unauthorized(f"user '{row.user_name}' is disabled")
            if by_cookie != (row.kind == "session"):
                # A session token only in its signed cookie, an API token only in the header: a
                # stolen cookie value is no bearer token, and the reverse.
                raise Unauthorized("this token cannot be used this way")
            if row.last_used_at is None or as_utc(row.last_used_at) + LAST_USED_EVERY < now:
                conn.execute(update(ApiToken).where(col(ApiToken.id) == row.id).values(last_used_at=now))
                conn.commit()
            return Caller(name=row.user_name, role=Role(row.role), token_id=row.id, by_cookie=by_cookie)


def check_origin(conn: HTTPConnection, *, required: bool) -> None:
    """A changing request from a browser must come from the dashboard's own origin (CSRF).

    A cross-site page can make a browser send the session cookie, never an Origin of ours. Bearer
    tokens are not sent by browsers on their own, so there an Origin is checked only when present.
    """
    origin = conn.headers.get("origin")
    if origin is None:
        if required:
            raise Forbidden("a changing request with a session cookie must carry an Origin header")
        return
    host = conn.headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc != host:
        raise Forbidden(f"requests from {origin} may not change anything here (Origin is not {host})")
