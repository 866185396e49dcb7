"""Routes: webhooks (and email) that announce the ends of their owner's jobs and sweeps.

A webhook's secret is made here, shown in the create answer only and stored encrypted; its
delivery log goes with it when it is removed (the log is only reachable through the webhook).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from sqlalchemy import delete
from sqlmodel import Session, col, select

from master import audit
from master.api.deps import MAX_INT32, MAX_INT64, CallerDep, SessionDep, StateDep, WriterDep, client_address
from master.api.errors import documented
from master.auth.callers import Caller
from master.models import Webhook, WebhookDelivery, WebhookDeliveryPublic, WebhookPublic
from master.notify.payloads import EVENTS, TEST_EVENT, probe_body
from master.notify.secrets import new_secret, secret_box
from master.notify.targets import MAILTO, TargetRefused, check_url
from shared.errors import InvalidRequest, NotFound
from shared.schemas import NAME_PATTERN

router = APIRouter(tags=["webhooks"], responses=documented(400, 401, 403, 404, 409, 422, 503))

#: Webhook ids are 32-bit in both databases.
WebhookId = Annotated[int, PathParam(ge=1, le=MAX_INT32, description="The webhook's id")]
Event = Literal["job.succeeded", "job.failed", "job.cancelled", "job.pruned", "sweep.ended"]


class WebhookCreate(BaseModel):
    url: str = Field(
        min_length=1,
        max_length=2048,
        # No spaces or control characters (PostgreSQL's text cannot even hold a NUL byte).
        pattern=r"^[^\x00-\x20\x7f]+$",
        description="https://... to POST to, or mailto:alice@example.com (needs the farm's SMTP settings)",
    )
    format: Literal["json", "slack", "email"] | None = Field(
        default=None,
        description="json (signed), slack (incoming webhook) or email; unset: email for mailto:, else json",
    )
    project: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="Only this project's jobs and sweeps"
    )
    events: list[Event] | None = Field(default=None, min_length=1, description="Unset: all five")


class WebhookCreated(WebhookPublic):
    #: The HMAC-SHA256 key that signs its deliveries; shown this once and never again.
    secret: str


class DeliveriesPage(BaseModel):
    items: list[WebhookDeliveryPublic]
    #: Pass as `before` for the next (older) page; null on the last page.
    next_before: int | None


def _format(body: WebhookCreate) -> str:
    is_mail = body.url.lower().startswith(MAILTO)
    fmt = body.format or ("email" if is_mail else "json")
    if is_mail != (fmt == "email"):
        raise InvalidRequest("format email goes with a mailto: URL, and only with one", field="format")
    return fmt


def _own_webhook(session: Session, caller: Caller, webhook_id: int) -> Webhook:
    """The webhook, if the caller owns it or is an admin; 404 otherwise, as if it were not there."""
    hook = session.get(Webhook, webhook_id)
    if hook is None or not (caller.is_admin or hook.owner == caller.name):
        raise NotFound(f"webhook {webhook_id} not found", field="webhook_id")
    return hook


def _public(hook: Webhook) -> WebhookPublic:
    return WebhookPublic.model_validate(hook.model_dump(exclude={"secret"}))


def _audit_target(hook: Webhook) -> dict[str, object]:
    # The URL stays out of the audit trail: a Slack or chat URL is itself a credential.
    return {"format": hook.format, "project": hook.project, "events": hook.events}


@router.post("/webhooks", status_code=201, response_model=WebhookCreated)
def create_webhook(
    body: WebhookCreate, caller: WriterDep, session: SessionDep, state: StateDep, request: Request
) -> WebhookCreated:
    """Announce your jobs' and sweeps' ends to a URL or an email address; the secret is in this answer only."""
    fmt = _format(body)
    try:
        check_url(body.url, state.settings)
    except TargetRefused as exc:
        raise InvalidRequest(f"url refused: {exc}", field="url") from None
    secret = new_secret()
    hook = Webhook(
        owner=caller.name,
        project=body.project,
        url=body.url,
        format=fmt,
        events=list(dict.fromkeys(body.events or EVENTS)),
        secret=secret_box(state.settings).seal(secret),
    )
    session.add(hook)
    session.flush()
    audit.record(
        session,
        caller.name,
        "webhook.create",
        f"webhook {hook.id}",
        _audit_target(hook),
        client_address(request),
    )
    session.commit()
    session.refresh(hook)
    return WebhookCreated.model_validate({**_public(hook).model_dump(), "secret": secret})


@router.get("/webhooks", response_model=list[WebhookPublic])
def list_webhooks(caller: CallerDep, session: SessionDep) -> list[WebhookPublic]:
    """Your webhooks (admins: everyone's), newest first; never their secrets."""
    query = select(Webhook).order_by(col(Webhook.id).desc())
    if not caller.is_admin:
        query = query.where(Webhook.owner == caller.name)
    return [_public(h) for h in session.exec(query)]


@router.get("/webhooks/{webhook_id}", response_model=WebhookPublic)
def get_webhook(webhook_id: WebhookId, caller: CallerDep, session: SessionDep) -> WebhookPublic:
    """One of your webhooks."""
    return _public(_own_webhook(session, caller, webhook_id))


@router.delete("/webhooks/{webhook_id}", response_model=WebhookPublic)
def delete_webhook(
    webhook_id: WebhookId, caller: WriterDep, session: SessionDep, request: Request
) -> WebhookPublic:
    """Remove a webhook and its delivery log; deliveries not yet sent are dropped."""
    hook = _own_webhook(session, caller, webhook_id)
    gone = _public(hook)
    session.execute(delete(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == webhook_id))
    session.delete(hook)
    audit.record(
        session,
        caller.name,
        "webhook.delete",
        f"webhook {webhook_id}",
        _audit_target(hook),
        client_address(request),
    )
    session.commit()
    return gone


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveriesPage)
def list_deliveries(
    webhook_id: WebhookId,
    caller: CallerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_INT64, description="Deliveries older than this id (next page)")
    ] = None,
) -> DeliveriesPage:
    """The webhook's delivery log, newest first: what was sent, how many tries, the last answer."""
    _own_webhook(session, caller, webhook_id)
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(col(WebhookDelivery.id).desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(col(WebhookDelivery.id) < before)
    rows = list(session.exec(query))
    page = rows[:limit]
    return DeliveriesPage(
        items=[WebhookDeliveryPublic.model_validate(r) for r in page],
        next_before=page[-1].id if len(rows) > limit else None,
    )


@router.post("/webhooks/{webhook_id}/test", status_code=201, response_model=WebhookDeliveryPublic)
def test_webhook(
    webhook_id: WebhookId, caller: WriterDep, session: SessionDep, state: StateDep, request: Request
) -> WebhookDeliveryPublic:
    """Queue a `test` delivery to the webhook; follow it in its delivery log."""
    hook = _own_webhook(session, caller, webhook_id)
    delivery = WebhookDelivery(
        webhook_id=webhook_id,
        event=TEST_EVENT,
        subject=f"webhook {webhook_id}",
        payload=probe_body(webhook_id, state.settings.api_url),
    )
    session.add(delivery)
    audit.record(session, caller.name, "webhook.test", f"webhook {hook.id}", address=client_address(request))
    session.commit()
    session.refresh(delivery)
    return WebhookDeliveryPublic.model_validate(delivery)
