"""How many long-lived connections (live-log streams) one client may hold open at once.

Each open stream costs the master a little memory and a share of every fan-out; the cap keeps one
client (a runaway script, a dashboard left open in fifty tabs) from taking that from everyone else.
Who "one client" is, is the caller's key: the client's address today, the signed-in user later.
"""

from __future__ import annotations


class ConnectionCap:
    """Open slots per key. Used from the event loop only (routes and responses), so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        """Take a slot for `key`; False when it already holds `limit` of them."""
        held = self._open.get(key, 0)
        if held >= self.limit:
            return False
        self._open[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._open.get(key, 0) - 1
        if held > 0:
            self._open[key] = held
        else:
            self._open.pop(key, None)

    def held(self, key: str) -> int:
        return self._open.get(key, 0)

    @property
    def total(self) -> int:
        return sum(self._open.values())
