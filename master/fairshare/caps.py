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
    #: (max_devices, max_queued) an admin set, None where the default applies. Plain values, not
    #: the rows: the book outlives the session that read it (the admission view).
    overrides: dict[tuple[str, str], tuple[int | None, int | None]]

    def of(self, user: str, queue: str) -> Caps:
        devices, queued = self.overrides.get((user, queue), (None, None))
        return Caps(
            self.default.max_devices if devices is None else devices,
            self.default.max_queued if queued is None else queued,
        )

    def source(self, user: str, queue: str) -> dict[str, str]:
        """Where each cap comes from: "user" (an admin set it) or "default"."""
        devices, queued = self.overrides.get((user, queue), (None, None))
        return {
            "max_devices": "default" if devices is None else "user",
            "max_queued": "default" if queued is None else "user",
        }


def read_caps(session: Session, default: Caps) -> CapBook:
    rows = session.exec(select(UserLimit)).all()
    return CapBook(default, {(r.user, r.queue): (r.max_devices, r.max_queued) for r in rows})
