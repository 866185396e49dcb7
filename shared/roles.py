"""Who may do what: the three roles of a farm's users."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    #: Everything, including users and other people's jobs.
    ADMIN = "admin"
    #: Submit; read; cancel and change only their own jobs, datasets and code bundles.
    MEMBER = "member"
    #: Read only.
    VIEWER = "viewer"

    @property
    def can_write(self) -> bool:
        return self is not Role.VIEWER


#: What a user name can look like; "me" is taken by the `owner=me` filter.
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RESERVED_USER_NAMES = frozenset({"me"})
