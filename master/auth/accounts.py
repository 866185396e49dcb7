"""Users and their tokens in the database: one function per change, each recorded in the audit trail.

Callers commit; nothing here does, so a change and its audit entry land together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from master import audit
from master.auth.passwords import hash_password, password_problem, verify_password
from master.auth.tokens import NewToken, make_token
from master.models import ApiToken, User, as_utc, utcnow
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.roles import RESERVED_USER_NAMES, USER_NAME_PATTERN, Role


@dataclass(frozen=True)
class IssuedToken:
    row: ApiToken
    plain: str


def find_user(session: Session, name: str) -> User | None:
    return session.exec(select(User).where(User.name == name)).first()


def get_user(session: Session, name: str) -> User:
    user = find_user(session, name)
    if user is None:
        raise NotFound(f"user '{name}' not found", field="name")
    return user


def create_user(
    session: Session, name: str, role: Role, password: str, *, actor: str | None, address: str | None = None
) -> User:
    if name.lower() in RESERVED_USER_NAMES:
        raise InvalidRequest(f"'{name}' is reserved; pick another name", field="name")
    if (problem := password_problem(password)) is not None:
        raise InvalidRequest(problem, field="password")
    if find_user(session, name) is not None:
        raise Conflict(f"user '{name}' exists", field="name")
    user = User(name=name, role=role, password_hash=hash_password(password))
    session.add(user)
    audit.record(session, actor, "user.create", f"user {name}", {"role": role.value}, address)
    return user


def _active_admins(session: Session) -> int:
    query = (
        select(func.count()).select_from(User).where(User.role == Role.ADMIN, col(User.disabled).is_(False))
    )
    return session.exec(query).one()


def _keep_an_admin(session: Session, user: User) -> None:
    if user.role is Role.ADMIN and not user.disabled and _active_admins(session) <= 1:
        raise Conflict(
            f"'{user.name}' is the farm's last active admin; make another admin first", field="name"
        )


def set_role(
    session: Session, user: User, role: Role, *, actor: str | None, address: str | None = None
) -> User:
    if role is not Role.ADMIN:
        _keep_an_admin(session, user)
    before = user.role
    user.role = role
    session.add(user)
    audit.record(
        session,
        actor,
        "user.set_role",
        f"user {user.name}",
        {"from": before.value, "to": role.value},
        address,
    )
    return user


def set_disabled(
    session: Session, user: User, disabled: bool, *, actor: str | None, address: str | None = None
) -> User:
    if disabled:
        _keep_an_admin(session, user)
    user.disabled = disabled
    session.add(user)
    action = "user.disable" if disabled else "user.enable"
    audit.record(session, actor, action, f"user {user.name}", address=address)
    return user


def set_password(
    session: Session, user: User, password: str, *, actor: str | None, address: str | None = None
) -> User:
    if (problem := password_problem(password)) is not None:
        raise InvalidRequest(problem, field="password")
    user.password_hash = hash_password(password)
    session.add(user)
    audit.record(session, actor, "user.set_password", f"user {user.name}", address=address)
    return user


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The user with this name and password, enabled; None otherwise, after the same work."""
    # A name no user can have (a NUL byte, say, which PostgreSQL would refuse) is looked up nowhere.
    user = find_user(session, name) if re.fullmatch(USER_NAME_PATTERN, name) else None
    ok = verify_password(password, user.password_hash if user is not None else None)
    return user if ok and user is not None and not user.disabled else None


def issue_token(
    session: Session,
    user: User,
    name: str,
    *,
    kind: str = "api",
    lifetime: timedelta | None = None,
    actor: str | None,
    address: str | None = None,
) -> IssuedToken:
    new: NewToken = make_token()
    expires_at = utcnow() + lifetime if lifetime is not None else None
    assert user.id is not None
    row = ApiToken(
        user_id=user.id, name=name, prefix=new.prefix, digest=new.digest, kind=kind, expires_at=expires_at
    )
    session.add(row)
    session.flush()
    detail = {"id": row.id, "kind": kind, "name": name}
    audit.record(session, actor, "token.create", f"user {user.name}", detail, address)
    return IssuedToken(row=row, plain=new.plain)


def revoke_token(
    session: Session, token: ApiToken, *, actor: str | None, address: str | None = None
) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.add(token)
        owner = session.get(User, token.user_id)
        detail = {"id": token.id, "kind": token.kind, "name": token.name}
        audit.record(session, actor, "token.revoke", f"user {owner.name if owner else '?'}", detail, address)
    return token


def list_tokens(
    session: Session, user: User | None, include_revoked: bool = False
) -> list[tuple[ApiToken, str]]:
    """Tokens with their owner's name, newest first: one user's, or everyone's for None."""
    query = select(ApiToken, User.name).join(User, col(User.id) == col(ApiToken.user_id))
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    if not include_revoked:
        query = query.where(col(ApiToken.revoked_at).is_(None))
    return [(t, n) for t, n in session.exec(query.order_by(col(ApiToken.id).desc()))]


def token_expired(token: ApiToken, now: datetime) -> bool:
    return token.expires_at is not None and as_utc(token.expires_at) <= now
