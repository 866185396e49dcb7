"""What a caller may do with a thing, by role and ownership: the answers routes act on."""

from __future__ import annotations

from typing import Literal

from master.auth.callers import Caller
from shared.errors import Forbidden

Visibility = Literal["team", "own"]


def require_writer(caller: Caller) -> Caller:
    if not caller.role.can_write:
        raise Forbidden(f"'{caller.name}' is a {caller.role.value}: viewers may read but not change anything")
    return caller


def require_admin(caller: Caller) -> Caller:
    if not caller.is_admin:
        raise Forbidden(f"only admins may do this ('{caller.name}' is a {caller.role.value})")
    return caller


def may_change(caller: Caller, owner: str | None) -> bool:
    """Admins change anything; members what they own; viewers nothing."""
    return caller.is_admin or (caller.role.can_write and owner is not None and owner == caller.name)


def check_may_change(caller: Caller, owner: str | None, what: str, verb: str) -> None:
    if may_change(caller, owner):
        return
    require_writer(caller)
    whose = f"belongs to {owner}" if owner else "has no owner"
    raise Forbidden(f"{what} {whose}: only its owner or an admin may {verb} it")


def sees_details(caller: Caller, owner: str | None, visibility: Visibility) -> bool:
    """Whether the caller reads a job's spec, logs, metrics and artifacts, not just its status."""
    return visibility == "team" or caller.is_admin or (owner is not None and owner == caller.name)
