"""API tokens: made, listed (never shown again) and revoked by their owners; admins see all."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from master.api.deps import MAX_INT32, CallerDep, SessionDep, StateDep, client_address
from master.api.errors import documented
from master.auth import accounts
from master.auth.callers import Caller
from master.auth.permissions import require_admin
from master.models import ApiToken, TokenPublic, User
from shared.errors import Forbidden, NotFound
from shared.roles import USER_NAME_PATTERN

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=documented(400, 401, 403, 404, 422, 429))

#: Token ids are 32-bit in both databases (a larger one would be a driver overflow, a 500).
TokenId = Annotated[int, PathParam(ge=1, le=MAX_INT32, description="The token's id")]


class TokenCreate(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[^\x00-\x1f]+$",
        description="What the token is for, e.g. 'laptop'",
    )
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="Unset: never expires")


class TokenCreated(TokenPublic):
    #: The token itself; shown this once and never again.
    token: str


def _public(row: ApiToken, user: str) -> TokenPublic:
    return TokenPublic.model_validate({**row.model_dump(), "user": user})


def _me(caller: Caller, session: SessionDep) -> User:
    if caller.name is None:
        raise Forbidden("authentication is off (TRAINFARM_AUTH_ENABLED=false): there are no tokens to manage")
    return accounts.get_user(session, caller.name)


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, caller: CallerDep, session: SessionDep, request: Request) -> TokenCreated:
    """Make an API token for yourself; its value is in this answer only."""
    user = _me(caller, session)
    lifetime = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    issued = accounts.issue_token(
        session, user, body.name, lifetime=lifetime, actor=caller.name, address=client_address(request)
    )
    session.commit()
    # The commit expired the row, and a model dump of an expired row is empty: read it back.
    session.refresh(issued.row)
    return TokenCreated.model_validate({**_public(issued.row, user.name).model_dump(), "token": issued.plain})


@router.get("", response_model=list[TokenPublic])
def list_tokens(
    caller: CallerDep,
    session: SessionDep,
    user: Annotated[
        str | None, Query(pattern=USER_NAME_PATTERN, description="Admins: this user's tokens")
    ] = None,
    revoked: Annotated[bool, Query(description="Include revoked tokens")] = False,
) -> list[TokenPublic]:
    """Your tokens (names, prefixes, expiry, last use; never their values), newest first."""
    if user is not None and user != caller.name:
        require_admin(caller)
        owner = accounts.get_user(session, user)
    else:
        owner = _me(caller, session)
    return [_public(t, name) for t, name in accounts.list_tokens(session, owner, revoked)]


@router.get("/all", response_model=list[TokenPublic])
def list_all_tokens(
    caller: CallerDep, session: SessionDep, revoked: Annotated[bool, Query()] = False
) -> list[TokenPublic]:
    """Admins: every user's tokens, newest first."""
    require_admin(caller)
    return [_public(t, name) for t, name in accounts.list_tokens(session, None, revoked)]


@router.delete("/{token_id}", response_model=TokenPublic)
def revoke_token(
    token_id: TokenId, caller: CallerDep, session: SessionDep, state: StateDep, request: Request
) -> TokenPublic:
    """Revoke a token at once: yours, or anyone's for an admin."""
    token = session.get(ApiToken, token_id)
    owner = session.get(User, token.user_id) if token is not None else None
    if token is None or owner is None or (owner.name != caller.name and not caller.is_admin):
        raise NotFound(f"token {token_id} not found", field="token_id")
    accounts.revoke_token(session, token, actor=caller.name, address=client_address(request))
    session.commit()
    state.auth.changed()
    session.refresh(token)
    return _public(token, owner.name)
