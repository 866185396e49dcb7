"""Tokens this master checked lately, so a request costs neither a database lookup nor a Redis
round trip, and yet a revoked token or a disabled user stops working on the next request.

Every change that can take access away (a token revoked, a user disabled or given another role, a
session closed) is announced after its commit on a Redis channel (`CHANNEL`); every master listens
and empties its cache when one arrives, the master that made the change before it answers. The
cache is used only while the listener is subscribed: with Redis away, each request asks the
database. Each entry is trusted `MAX_AGE` seconds at most, which bounds what an edit made straight
in the database (not through the API) or a listener whose connection died unnoticed can leave stale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

CHANNEL = "tf:auth:changed"
#: Entries kept at most; past it the cache starts again (a farm has a few hundred tokens).
MAX_ENTRIES = 10_000
MAX_AGE = 30.0


@dataclass(frozen=True)
class TokenRecord:
    """What checking a token needs of its row and its user's."""

    id: int
    name: str
    prefix: str
    kind: str
    revoked_at: datetime | None
    expires_at: datetime | None
    user_name: str
    role: str
    disabled: bool


@dataclass
class _Entry:
    record: TokenRecord
    loaded: float
    #: When this master last wrote the token's `last_used_at` (monotonic), or None.
    touched: float | None


class TokenCache:
    def __init__(self, max_age: float = MAX_AGE, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: dict[str, _Entry] = {}
        self._max_age = max_age
        self._max_entries = max_entries
        #: Set while the master hears the change channel; the cache is bypassed otherwise.
        self.listening = False
        #: Moves on every clear: a row loaded before a change committed is not kept after it.
        self.generation = 0

    def get(self, digest: str) -> TokenRecord | None:
        entry = self._entries.get(digest) if self.listening else None
        if entry is None:
            return None
        if time.monotonic() - entry.loaded > self._max_age:
            del self._entries[digest]
            return None
        return entry.record

    def put(self, digest: str, record: TokenRecord, generation: int) -> None:
        """Keep `record`, read from the database after `generation` was current, unless the cache
        was cleared since (the row may predate the change that cleared it)."""
        if not self.listening or generation != self.generation:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[digest] = _Entry(record, time.monotonic(), None)

    def due_touch(self, digest: str, every: float) -> bool:
        """Whether `last_used_at` should be written for this token now (at most once per `every` s
        while it is cached); marks it written."""
        entry = self._entries.get(digest)
        now = time.monotonic()
        if entry is None or (entry.touched is not None and now - entry.touched < every):
            return False
        entry.touched = now
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.generation += 1
