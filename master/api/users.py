"""Users: admins add them, change roles, disable and enable them, reset passwords."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from sqlmodel import col, select

from master.api.deps import AdminDep, SessionDep, StateDep, client_address
from master.api.errors import documented
from master.auth import accounts
from master.models import User, UserPublic
from shared.roles import USER_NAME_PATTERN, Role

router = APIRouter(prefix="/users", tags=["users"], responses=documented(400, 401, 403, 404, 409, 422, 429))

UserName = Annotated[str, PathParam(pattern=USER_NAME_PATTERN, description="The user's name")]


class UserCreate(BaseModel):
    name: str = Field(pattern=USER_NAME_PATTERN)
    role: Role = Role.MEMBER
    password: str = Field(min_length=1, max_length=1024, repr=False)


class UserUpdate(BaseModel):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=1, max_length=1024, repr=False)


@router.get("", response_model=list[UserPublic])
def list_users(caller: AdminDep, session: SessionDep) -> list[User]:
    """Every user, by name."""
    return list(session.exec(select(User).order_by(col(User.name))))


@router.post("", status_code=201, response_model=UserPublic)
def create_user(body: UserCreate, caller: AdminDep, session: SessionDep, request: Request) -> User:
    """Add a user with a role and a first password."""
    address = client_address(request)
    user = accounts.create_user(
        session, body.name, body.role, body.password, actor=caller.name, address=address
    )
    session.commit()
    session.refresh(user)
    return user


@router.get("/{name}", response_model=UserPublic)
def get_user(name: UserName, caller: AdminDep, session: SessionDep) -> User:
    """One user."""
    return accounts.get_user(session, name)


@router.patch("/{name}", response_model=UserPublic)
def update_user(
    name: UserName, body: UserUpdate, caller: AdminDep, session: SessionDep, state: StateDep, request: Request
) -> User:
    """Change a user's role, disable or enable them (a disabled user's tokens stop at once), or set a new password."""
    user = accounts.get_user(session, name)
    address = client_address(request)
    if body.role is not None and body.role is not user.role:
        accounts.set_role(session, user, body.role, actor=caller.name, address=address)
    if body.disabled is not None and body.disabled != user.disabled:
        accounts.set_disabled(session, user, body.disabled, actor=caller.name, address=address)
    if body.password is not None:
        accounts.set_password(session, user, body.password, actor=caller.name, address=address)
    session.commit()
    state.auth.changed()  # a disabled user's or a demoted admin's cached tokens go at once
    session.refresh(user)
    return user
