"""Admins' commands over the API: `users ...` (add, list, disable, enable, set-role, set-password)
and `audit` (who did what)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import click
import typer
from rich.table import Table

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
