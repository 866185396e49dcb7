"""Who is calling: resolved once per request from a bearer token or the dashboard's cookie."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from sqlalchemy import Engine, Select, bindparam, select, update
from sqlmodel import col
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from master.auth import tokens
from master.auth.rate_limits import RateLimits
from master.auth.sessions import COOKIE, SessionCookies
from master.auth.token_cache import CHANNEL, MAX_AGE, TokenCache, TokenRecord
from master.models import ApiToken, User, as_utc, utcnow
from shared.errors import Forbidden, Unauthorized
from shared.roles import Role

log = logging.getLogger("trainfarm.master.auth")

#: `last_used_at` is written at most this often per token: a write per request would cost more
#: than the lookup it records.
LAST_USED_EVERY = timedelta(minutes=1)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Tries at announcing an access change before giving up (the redis client retries each too).
ANNOUNCE_TRIES = 3
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

    A token is looked up by its SHA-256, joined with its user, and kept in a `TokenCache` that every
    master empties when any of them announces a change that takes access away (`changed`, `watch`):
    a revoked token or a disabled user's stops on the next request, and a request with a known
    token costs no database query and no Redis round trip.
    """

    def __init__(
        self,
        engine: Engine,
        broker: redis.Redis,
        aredis: aioredis.Redis,
        cookies: SessionCookies,
        limits: RateLimits,
        metrics_token: str | None,
    ) -> None:
        self._engine = engine
        self._broker = broker
        self._aredis = aredis
        self.cookies = cookies
        self.limits = limits
        self._metrics_token = metrics_token
        self.cache = TokenCache()

    async def caller(self, conn: HTTPConnection) -> Caller:
        plain, by_cookie = self._credentials(conn)
        if not tokens.looks_like_token(plain):
            raise Unauthorized("that is not a trainfarm token (they start with 'tf_')")
        digest = tokens.digest(plain)
        record = await self._record(digest)
        caller = _admit(record, by_cookie)
        if conn.scope.get("method", "GET") not in SAFE_METHODS:
            check_origin(conn, required=by_cookie)
            await self.limits.count_mutation(f"token:{record.id}")
        if self.cache.due_touch(digest, LAST_USED_EVERY.total_seconds()):
            await run_in_threadpool(self._touch, record.id)
        return caller

    def changed(self) -> None:
        """Call after committing a change that takes access away (a token revoked, a user disabled
        or given another role): this master's cached tokens go now, every other master's as the
        announcement reaches it, milliseconds later."""
        self.cache.clear()
        for attempt in range(ANNOUNCE_TRIES):
            try:
                self._broker.publish(CHANNEL, "changed")
                return
            except redis.RedisError as exc:
                error = exc
                time.sleep(0.1 * (attempt + 1))
        # Another master whose listener still hears Redis trusts its copy for up to
        # TokenCache's MAX_AGE; one cut off from Redis checks the database on every request.
        log.error(
            "could not announce an access change in Redis (%s): other masters may accept "
            "the old token or role for up to %.0f s",
            error,
            MAX_AGE,
        )

    async def watch(self) -> None:
        """Empty the cache whenever any master announces a change; run as a task until cancelled.
        The cache is used only while subscribed."""
        while True:
            try:
                async with self._aredis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":
                            self.cache.listening = True
                        self.cache.clear()
            except redis.RedisError as exc:
                log.warning("lost the access-change channel (%s); checking every token in the database", exc)
            finally:
                self.cache.listening = False
                self.cache.clear()
            await asyncio.sleep(1)

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

    async def _record(self, digest: str) -> TokenRecord:
        record = self.cache.get(digest)
        if record is None:
            generation = self.cache.generation
            record = _known(await run_in_threadpool(self._load, digest))
            self.cache.put(digest, record, generation)
        return record

    def _load(self, digest: str) -> TokenRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(TOKEN_LOOKUP, {"digest": digest}).first()
        if row is None:
            return None
        return TokenRecord(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            kind=row.kind,
            revoked_at=row.revoked_at,
            expires_at=row.expires_at,
            user_name=row.user_name,
            role=row.role,
            disabled=row.disabled,
        )

    def _touch(self, token_id: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(ApiToken).where(col(ApiToken.id) == token_id).values(last_used_at=utcnow()))


def _known(record: TokenRecord | None) -> TokenRecord:
    if record is None:
        raise Unauthorized("unknown token: it was never issued or its user was removed")
    return record


def _admit(record: TokenRecord, by_cookie: bool) -> Caller:
    """The caller a token stands for, or the 401 that says why it does not work (checked on every
    request, cached or not: an expiry passes while a token sits in the cache)."""
    if record.revoked_at is not None:
        raise Unauthorized(f"token '{record.name}' ({record.prefix}…) was revoked")
    if record.expires_at is not None and as_utc(record.expires_at) <= utcnow():
        raise Unauthorized(
            f"token '{record.name}' ({record.prefix}…) expired at {record.expires_at:%Y-%m-%d %H:%M} UTC"
        )
    if record.disabled:
        raise Unauthorized(f"user '{record.user_name}' is disabled")
    if by_cookie != (record.kind == "session"):
        # A session token only in its signed cookie, an API token only in the header: a stolen
        # cookie value is no bearer token, and the reverse.
        raise Unauthorized("this token cannot be used this way")
    return Caller(name=record.user_name, role=Role(record.role), token_id=record.id, by_cookie=by_cookie)


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
