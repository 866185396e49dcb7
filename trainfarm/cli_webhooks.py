"""`trainfarm webhooks ...`: notifications when jobs and sweeps end."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from trainfarm import render
from trainfarm.client import ApiClient

webhooks = typer.Typer(
    help="Webhooks and email: be told when your jobs and sweeps end.", no_args_is_help=True
)

WebhookId = Annotated[int, typer.Argument(metavar="ID", help="The webhook's id.", min=1, show_default=False)]


class Format(StrEnum):
    JSON = "json"
    SLACK = "slack"
    EMAIL = "email"


@webhooks.command("add")
def add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(metavar="URL", help="https://... or mailto:you@example.com.")],
    format: Annotated[
        Format | None, typer.Option("--format", help="json (signed), slack or email; default: from the URL.")
    ] = None,
    project: Annotated[str | None, typer.Option(help="Only this project's jobs and sweeps.")] = None,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help="job.succeeded, job.failed, job.cancelled, job.pruned or sweep.ended; repeat it. Default: all.",
        ),
    ] = None,
) -> None:
    """Add a webhook; its signing secret is printed this once.

    Examples:
      trainfarm webhooks add https://ci.example.com/hooks/trainfarm
      trainfarm webhooks add https://hooks.slack.com/services/T0/B0/XX --format slack --project vision
      trainfarm webhooks add mailto:alice@example.com --event job.failed
    """
    api: ApiClient = ctx.obj
    body: dict[str, Any] = {"url": url}
    if format is not None:
        body["format"] = format.value
    if project is not None:
        body["project"] = project
    if event:
        body["events"] = event
    made = api.call("POST", "/webhooks", json=body)
    click.echo(f"added webhook {made['id']} ({made['format']}, {', '.join(made['events'])})")
    click.echo(f"secret: {made['secret']}")
    click.echo("keep the secret: it verifies the X-Trainfarm-Signature header and is not shown again")


@webhooks.command("list")
def list_webhooks(ctx: typer.Context) -> None:
    """List your webhooks (admins: everyone's).

    Example:
      trainfarm webhooks list
    """
    api: ApiClient = ctx.obj
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "OWNER", "FORMAT", "PROJECT", "EVENTS", "URL"):
        table.add_column(column, no_wrap=column != "URL")
    for hook in api.call("GET", "/webhooks"):
        render.add_row(
            table,
            str(hook["id"]),
            hook["owner"] or "-",
            hook["format"],
            hook["project"] or "(all)",
            ",".join(hook["events"]),
            hook["url"],
        )
    render.console().print(table)


@webhooks.command("remove")
def remove(ctx: typer.Context, webhook_id: WebhookId) -> None:
    """Remove a webhook and its delivery log.

    Example:
      trainfarm webhooks remove 3
    """
    api: ApiClient = ctx.obj
    api.call("DELETE", f"/webhooks/{webhook_id}")
    click.echo(f"removed webhook {webhook_id}")


@webhooks.command("deliveries")
def deliveries(
    ctx: typer.Context,
    webhook_id: WebhookId,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
) -> None:
    """Show a webhook's delivery log: what was sent, tries, the receiver's last answer.

    Example:
      trainfarm webhooks deliveries 3
    """
    api: ApiClient = ctx.obj
    page = api.call("GET", f"/webhooks/{webhook_id}/deliveries", params={"limit": limit})
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "EVENT", "SUBJECT", "STATUS", "TRIES", "CODE", "CREATED", "LAST ERROR"):
        table.add_column(column, no_wrap=column != "LAST ERROR")
    for item in page["items"]:
        render.add_row(
            table,
            str(item["id"]),
            item["event"],
            item["subject"],
            render.status_text(_status_colour(item["status"]), item["status"]),
            str(item["attempts"]),
            "-" if item["last_code"] is None else str(item["last_code"]),
            render.format_time(item["created_at"]),
            item["last_error"] or "",
        )
    render.console().print(table)


def _status_colour(status: str) -> str:
    """The job status whose colour a delivery's status borrows."""
    return {"delivered": "succeeded", "failed": "failed"}.get(status, "queued")


@webhooks.command("test")
def test(ctx: typer.Context, webhook_id: WebhookId) -> None:
    """Send a test delivery now; `webhooks deliveries ID` shows how it went.

    Example:
      trainfarm webhooks test 3
    """
    api: ApiClient = ctx.obj
    delivery = api.call("POST", f"/webhooks/{webhook_id}/test")
    click.echo(f"queued test delivery {delivery['id']} to webhook {webhook_id}")
