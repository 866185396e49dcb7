"""A farm's first admin, written straight into the database (no token needed: there is none yet)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, select

from master.auth import accounts, tokens
from master.models import ApiToken, User
from shared.roles import Role


def ensure_admin(
    engine: Engine, name: str, password: str, token: str, token_name: str = "standalone"
) -> None:
    """Make admin `name` with `password` and API token `token`, unless they are there already."""
    with Session(engine) as session:
        user = accounts.find_user(session, name)
        if user is None:
            user = accounts.create_user(session, name, Role.ADMIN, password, actor=None)
            session.flush()
        digest = tokens.digest(token)
        if session.exec(select(ApiToken).where(ApiToken.digest == digest)).first() is None:
            assert user.id is not None
            row = ApiToken(user_id=user.id, name=token_name, prefix=token[: tokens.SHOWN], digest=digest)
            session.add(row)
        session.commit()


def create_admin_user(engine: Engine, name: str, role: Role, password: str) -> User:
    """`trainfarm admin create-user`: any role, made on the master's host."""
    with Session(engine) as session:
        user = accounts.create_user(session, name, role, password, actor=None)
        session.commit()
        session.refresh(user)
        return user
