"""Per-user caps on a queue: the farm's defaults (settings) unless an admin set the user's own."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from master.models import UserLimit


@dataclass(frozen=True)
class Caps:
    """0 means no cap."""

    max_devices: int
    max_queued: int

    def devices_allow(self, holding: int, more: int) -> bool:
        return self.max_devices == 0 or holding + more <= self.max_devices


@dataclass(frozen=True)
class CapBook:
    """Every user's caps: defaults, and overrides by (user, queue)."""

    default: Caps
    overrides: dict[tuple[str, str], UserLimit]

    def of(self, user: str, queue: str) -> Caps:
        row = self.overrides.get((user, queue))
        if row is None:
            return self.default
        return Caps(
            self.default.max_devices if row.max_devices is None else row.max_devices,
            self.default.max_queued if row.max_queued is None else row.max_queued,
        )

    def source(self, user: str, queue: str) -> dict[str, str]:
        """Where each cap comes from: "user" (an admin set it) or "default"."""
        row = self.overrides.get((user, queue))
        return {
            "max_devices": "user" if row is not None and row.max_devices is not None else "default",
            "max_queued": "user" if row is not None and row.max_queued is not None else "default",
        }


def read_caps(session: Session, default: Caps) -> CapBook:
    rows = session.exec(select(UserLimit)).all()
    return CapBook(default, {(r.user, r.queue): r for r in rows})
