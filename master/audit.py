"""The audit trail: who submitted, cancelled, uploaded, created or revoked what, and when.

An entry is added to the session of the change it records, so both are committed together or not
at all.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from master.models import AuditEvent

#: Longest `target` kept; longer ones (a user name someone typed at the login form) are cut.
TARGET_MAX = 255


def record(
    session: Session,
    actor: str | None,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
    address: str | None = None,
) -> AuditEvent:
    entry = AuditEvent(
        actor=actor, action=action, target=target[:TARGET_MAX], detail=detail or {}, address=(address or None)
    )
    session.add(entry)
    return entry
