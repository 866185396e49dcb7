"""Admins' commands over the API: `users ...` (add, list, disable, enable, set-role, set-password,
limits, set-limits) and `audit` (who did what)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from shared.errors import TrainfarmError
from shared.roles import Role
from trainfarm import render
from trainfarm.cli_auth import PasswordStdin, new_password
from trainfarm.client import ApiClient

UserName = Annotated[str, typer.Argument(metavar="NAME", help="The user's name.", show_default=False)]
RoleArgument = Annotated[
    Role,
    typer.Argument(metavar="ROLE", case_sensitive=False, help="admin, member or viewer.", show_default=False),
]

users = typer.Typer(
    help="The farm's users and their roles (admins only): admins do everything, members submit "
    "and change their own jobs and datasets, viewers only look.",
    no_args_is_help=True,
)


@users.command("add")
def add_user(
    ctx: typer.Context,
    name: UserName,
    role: Annotated[Role, typer.Option(case_sensitive=False, help="admin, member or viewer.")] = Role.MEMBER,
    password_stdin: PasswordStdin = False,
) -> None:
    """Add a user with a role; their first password is typed twice (hidden) or read from stdin.

    The new user then runs `trainfarm login` with it.

    Examples:
      trainfarm users add alice --role member
      printf '%s\\n' "$PASSWORD" | trainfarm users add ci-bot --role member --password-stdin
    """
    api: ApiClient = ctx.obj
    made = api.create_user(name, role.value, new_password(password_stdin))
    click.echo(f"added user {made['name']} ({made['role']})")


@users.command("list")
def list_users(ctx: typer.Context) -> None:
    """List every user, by name.

    With their role, whether they are disabled, and when they were added.

    Example:
      trainfarm users list
    """
    api: ApiClient = ctx.obj
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ROLE", "DISABLED", "CREATED"):
        table.add_column(column, no_wrap=True)
    for user in api.list_users():
        disabled = "yes" if user["disabled"] else "no"
        render.add_row(table, user["name"], user["role"], disabled, render.format_time(user["created_at"]))
    render.console().print(table)


@users.command("disable")
def disable_user(ctx: typer.Context, name: UserName) -> None:
    """Disable a user: their tokens and dashboard sessions stop working at once.

    The user stays, with their jobs and the audit trail; `users enable` lets them back in.

    Example:
      trainfarm users disable bob
    """
    api: ApiClient = ctx.obj
    api.update_user(name, disabled=True)
    click.echo(f"disabled user {name}: their tokens and sessions no longer work")


@users.command("enable")
def enable_user(ctx: typer.Context, name: UserName) -> None:
    """Enable a disabled user again.

    Their tokens that have neither expired nor been revoked work again.

    Example:
      trainfarm users enable bob
    """
    api: ApiClient = ctx.obj
    api.update_user(name, disabled=False)
    click.echo(f"enabled user {name}")


@users.command("set-role")
def set_role(ctx: typer.Context, name: UserName, role: RoleArgument) -> None:
    """Give a user another role; it applies to their next request.

    The farm refuses to take away its last active admin.

    Example:
      trainfarm users set-role alice viewer
    """
    api: ApiClient = ctx.obj
    changed = api.update_user(name, role=role.value)
    click.echo(f"{changed['name']} is now {changed['role']}")


@users.command("set-password")
def set_password(ctx: typer.Context, name: UserName, password_stdin: PasswordStdin = False) -> None:
    """Set a user's password.

    Typed twice at a hidden prompt, or read from stdin with --password-stdin; never an argument, which would end up in the shell's history.

    Example:
      trainfarm users set-password alice
    """
    api: ApiClient = ctx.obj
    api.update_user(name, password=new_password(password_stdin))
    click.echo(f"password of {name} changed")


class Queue(StrEnum):
    gpu = "gpu"
    cpu = "cpu"


QueueOption = Annotated[Queue, typer.Option(case_sensitive=False, help="The queue the caps apply to.")]


@users.command("limits")
def show_limits(ctx: typer.Context, name: UserName) -> None:
    """Show a user's caps on every queue, and whether an admin set them or the farm's default applies.

    Admins read anyone's; others their own. A cap of 0 means none.

    Example:
      trainfarm users limits alice
    """
    api: ApiClient = ctx.obj
    render.console().print(limits_table(api.user_limits(name)))


@users.command("set-limits")
def set_limits(
    ctx: typer.Context,
    name: UserName,
    queue: QueueOption = Queue.gpu,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            min=0,
            metavar="N",
            help="Most GPUs the user's running jobs hold at once (gpu queue; 0: no cap).",
        ),
    ] = None,
    devices: Annotated[
        int | None,
        typer.Option(
            "--devices",
            min=0,
            metavar="N",
            help="The same cap by its general name (the cpu queue counts job slots; 0: no cap).",
        ),
    ] = None,
    queued: Annotated[
        int | None,
        typer.Option("--queued", min=0, metavar="N", help="Most jobs the user may have queued (0: no cap)."),
    ] = None,
    default: Annotated[
        bool, typer.Option("--default", help="Both caps back to the farm's default (TRAINFARM_USER_MAX_*).")
    ] = False,
) -> None:
    """Cap what one user holds on a queue (admins only); admission applies it at once.

    A cap not given stays as it is. Jobs already running are not stopped: a user past a new device
    cap just starts nothing more until they are under it.

    Examples:
      trainfarm users set-limits alice --gpus 4
      trainfarm users set-limits bob --queue cpu --devices 2 --queued 100
      trainfarm users set-limits alice --default
    """
    if gpus is not None and devices is not None:
        raise TrainfarmError("give --gpus or --devices, not both (they are the same cap)", field="--gpus")
    if gpus is not None and queue is not Queue.gpu:
        raise TrainfarmError(f"--gpus caps the gpu queue; use --devices for {queue.value}", field="--gpus")
    max_devices = gpus if gpus is not None else devices
    if default and (max_devices is not None or queued is not None):
        raise TrainfarmError("--default resets both caps: give it alone", field="--default")
    if not default and max_devices is None and queued is None:
        raise TrainfarmError("give --gpus/--devices, --queued or --default", field="--gpus")
    api: ApiClient = ctx.obj
    if not default:
        # The route sets both caps of the queue; one not given keeps what an admin set before.
        current = next(q for q in api.user_limits(name) if q["queue"] == queue.value)
        if max_devices is None and current["limits_from"]["max_devices"] == "user":
            max_devices = current["max_devices"]
        if queued is None and current["limits_from"]["max_queued"] == "user":
            queued = current["max_queued"]
    render.console().print(limits_table(api.set_user_limits(name, queue.value, max_devices, queued)))


def cap_text(value: int, source: str) -> str:
    """`4`, `no cap` (0), with `(default)` where the farm's setting applies."""
    text = "no cap" if value == 0 else str(value)
    return f"{text} (default)" if source == "default" else text


def limits_table(limits: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("USER", "QUEUE", "DEVICES", "QUEUED"):
        table.add_column(column, no_wrap=True)
    for row in limits:
        source = row["limits_from"]
        render.add_row(
            table,
            row["user"],
            row["queue"],
            cap_text(row["max_devices"], source["max_devices"]),
            cap_text(row["max_queued"], source["max_queued"]),
        )
    return table


def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Newest entries to show.")] = 50,
    user: Annotated[
        str | None, typer.Option("--user", metavar="NAME", help="Only what this user did.")
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            metavar="ACTION", help="Only this action (job.cancel), or a kind of them (job, user, token)."
        ),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every matching entry, page after page.")] = False,
) -> None:
    """Show the audit trail (admins only): who submitted, cancelled, uploaded, made or revoked what.

    Newest first; `-` as the actor is the farm itself, or a user name nobody has (a failed login).

    Examples:
      trainfarm audit
      trainfarm audit --user alice --action job
      trainfarm audit --action auth.login_failed --all
    """
    api: ApiClient = ctx.obj
    if every:
        items, more = list(api.iter_audit(user, action)), False
    else:
        page = api.audit(limit, None, user, action)
        items, more = page["items"], page["next_before"] is not None
    if not items:
        click.echo("no audit entries", err=True)
        return
    render.console().print(audit_table(items))
    if more:
        click.echo(f"(the newest {limit}; --all or --limit for more)", err=True)


def audit_table(items: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("TIME", "ACTOR", "ACTION", "TARGET", "ADDRESS", "DETAIL"):
        table.add_column(column, no_wrap=column not in ("TARGET", "DETAIL"))
    for entry in items:
        render.add_row(
            table,
            render.format_time(entry["at"]),
            entry.get("actor") or "-",
            entry["action"],
            entry["target"],
            entry.get("address") or "-",
            detail_text(entry.get("detail") or {}),
        )
    return table


def detail_text(detail: dict[str, Any]) -> str:
    """`id=7 kind=api name=ci`: short values as they are, anything nested as compact JSON."""
    parts = []
    for key, value in detail.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={text}")
    return " ".join(parts)
