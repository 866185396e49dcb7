"""Which webhooks may fire: not disabled, and not owned by a disabled user.

Disabling a user stops their tokens at once; their webhooks stop too, so a colleague who left the
lab hears nothing more of the farm: no delivery is queued for them, and one queued before is not
sent while the user stays disabled (each try fails, and is retried with backoff as any failed try,
until `webhook_max_attempts`). Enabling the user again brings the webhooks back as they were,
with any delivery that still had tries left.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement
from sqlmodel import col, or_, select

from master.models import User, Webhook


def may_fire() -> ColumnElement[bool]:
    """The WHERE clause of webhooks that may fire. A webhook without an owner (made before the first
    user) has nobody to be disabled."""
    disabled_users = select(User.name).where(col(User.disabled).is_(True))
    return col(Webhook.disabled).is_(False) & or_(  # type: ignore[return-value]
        col(Webhook.owner).is_(None), col(Webhook.owner).not_in(disabled_users)
    )
