"""Logging in: tokens over the OAuth2 password form, the dashboard's session cookie, who am I."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel
from sqlmodel import Session

from master import audit
from master.api.deps import CallerDep, SessionDep, StateDep, client_address
from master.api.errors import documented
from master.auth import accounts
from master.auth.callers import check_origin
from master.auth.sessions import COOKIE
from master.models import ApiToken, User
from master.state import MasterState
from shared.errors import Unauthorized
from shared.roles import USER_NAME_PATTERN, Role

router = APIRouter(prefix="/auth", tags=["auth"], responses=documented(400, 401, 403, 422, 429))

LoginForm = Annotated[OAuth2PasswordRequestForm, Depends()]
BAD_LOGIN = "wrong user name or password"


class TokenAnswer(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime | None


class Me(BaseModel):
    name: str | None
    role: Role
    #: Whether the farm checks credentials at all (TRAINFARM_AUTH_ENABLED).
    auth_enabled: bool
    #: TRAINFARM_JOB_VISIBILITY: `team` or `own`.
    job_visibility: str


def _login(state: MasterState, session: Session, form: OAuth2PasswordRequestForm, request: Request) -> User:
    """The user the form names, its password checked; 401 alike for a wrong name and a wrong password.

    A login form posted from another site is refused (403), so no page can sign a visitor's browser
    in to the farm as someone else."""
    check_origin(request, required=False)
    address = client_address(request)
    limits = state.auth.limits
    limits.check_login(address)
    user = accounts.authenticate(session, form.username, form.password)
    if user is None:
        limits.failed_login(address)
        # A name no user could have (NUL bytes and all) is kept as printable text.
        typed = form.username if re.fullmatch(USER_NAME_PATTERN, form.username) else repr(form.username)[:64]
        audit.record(session, None, "auth.login_failed", f"user {typed}", address=address)
        session.commit()
        raise Unauthorized(BAD_LOGIN, field="password")
    return user


@router.post("/login", response_model=TokenAnswer)
def login(form: LoginForm, session: SessionDep, state: StateDep, request: Request) -> TokenAnswer:
    """Trade a user name and password (the OAuth2 password form) for an API token."""
    address = client_address(request)
    user = _login(state, session, form, request)
    lifetime = timedelta(days=state.settings.login_token_days)
    issued = accounts.issue_token(
        session,
        user,
        f"login from {address}",
        kind="login",
        lifetime=lifetime,
        actor=user.name,
        address=address,
    )
    session.commit()
    return TokenAnswer(access_token=issued.plain, expires_at=issued.row.expires_at)


@router.post("/session", response_model=Me)
def open_session(
    form: LoginForm, session: SessionDep, state: StateDep, request: Request, response: Response
) -> Me:
    """Log in to the dashboard: sets an HttpOnly, SameSite=Strict, signed session cookie."""
    address = client_address(request)
    user = _login(state, session, form, request)
    ttl = state.settings.session_ttl
    issued = accounts.issue_token(
        session,
        user,
        "dashboard",
        kind="session",
        lifetime=timedelta(seconds=ttl),
        actor=user.name,
        address=address,
    )
    session.commit()
    response.set_cookie(
        COOKIE,
        state.auth.cookies.seal(issued.plain),
        max_age=ttl,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return Me(name=user.name, role=user.role, auth_enabled=True, job_visibility=state.settings.job_visibility)


@router.delete("/session", status_code=204, responses=documented(403))
def close_session(
    caller: CallerDep, session: SessionDep, state: StateDep, request: Request, response: Response
) -> None:
    """Log out of the dashboard: the session's token is revoked and its cookie cleared."""
    if caller.token_id is not None and caller.by_cookie:
        token = session.get(ApiToken, caller.token_id)
        if token is not None:
            accounts.revoke_token(session, token, actor=caller.name, address=client_address(request))
            session.commit()
            state.auth.changed()
    response.delete_cookie(COOKIE, path="/")


@router.get("/me", response_model=Me)
def whoami(caller: CallerDep, state: StateDep) -> Me:
    """The user behind this token or session, and their role."""
    return Me(
        name=caller.name,
        role=caller.role,
        auth_enabled=state.settings.auth_enabled,
        job_visibility=state.settings.job_visibility,
    )
