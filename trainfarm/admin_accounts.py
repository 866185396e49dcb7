"""What `trainfarm admin` does, with the master's packages: imported only when such a command runs,
so the CLI works on a compute node, which has none of them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from master.auth import accounts
from master.auth.first_admin import create_admin_user
from master.db import init_db
from shared.roles import Role
from trainfarm.db_admin import _database


@dataclass(frozen=True)
class CreatedUser:
    name: str
    role: str
    #: Where it was written, password hidden.
    database: str
    #: The API token made with it, when one was asked for.
    token: str | None


def create_user(
    database_url: str | None, name: str, role: Role, password: str, token_name: str | None
) -> CreatedUser:
    """Bring the schema up to date, make the user and, with `token_name`, an API token of theirs."""
    with _database(database_url) as engine:
        init_db(engine)
        user = create_admin_user(engine, name, role, password)
        plain = None
        if token_name is not None:
            with Session(engine) as session:
                issued = accounts.issue_token(
                    session, accounts.get_user(session, name), token_name, actor=None
                )
                session.commit()
                plain = issued.plain
        shown = engine.url.render_as_string(hide_password=True)
    return CreatedUser(user.name, user.role.value, shown, plain)
