"""The one error migrations raise on purpose."""

from __future__ import annotations

from shared.errors import TrainfarmError


class MigrationError(TrainfarmError):
    """The database is in a state no migration leads from: newer than this trainfarm, or not ours."""
