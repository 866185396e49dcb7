"""Logging in and out, who am I, and API tokens: `login`, `logout`, `whoami`, `tokens ...`.

Passwords are typed at a hidden prompt or read from stdin (`--password-stdin`), never taken as an
argument, where they would end up in the shell's history and in `ps`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from shared.errors import TrainfarmError
from trainfarm import render
from trainfarm.client import ApiClient, ApiError, ApiRateLimited, ApiUnreachable
from trainfarm.token_store import find_token, forget_token, save_token, tokens_file

#: `logout` should not hang for half a minute on a master that is gone: it forgets the token anyway.
LOGOUT_TIMEOUT = 10.0

PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from stdin (one line) instead of a prompt, for scripts.",
    ),
]


# Prompts -----------------------------------------------------------------------------------------


def ask(text: str, *, hidden: bool = False, confirm: bool = False) -> str:
    """A typer prompt; Ctrl-C (or stdin ending) there leaves with status 130 and no traceback."""
    try:
        answer: str = typer.prompt(text, hide_input=hidden, confirmation_prompt=confirm)
    except typer.Abort:  # typer's own click raises it, not the click package's
        # Click has ended a hidden prompt's line already; a visible one's cursor is still on it.
        click.echo("cancelled" if hidden else "\ncancelled", err=True)
        raise typer.Exit(130) from None
    return answer


def read_stdin_line(what: str, option: str) -> str:
    """One line from stdin (its newline dropped): a password or token piped in by a script."""
    text = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not text:
        raise TrainfarmError(f"no {what} on stdin", field=option)
    if "\n" in text:
        raise TrainfarmError(f"stdin holds more than one line; give the {what} alone", field=option)
    return text


def new_password(from_stdin: bool) -> str:
    """A password to set: from stdin, or typed twice at a hidden prompt."""
    if from_stdin:
        return read_stdin_line("password", "--password-stdin")
    return ask("Password", hidden=True, confirm=True)


# login, logout, whoami ---------------------------------------------------------------------------


def login(
    ctx: typer.Context,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", metavar="NAME", help="User name; asked for when not given."),
    ] = None,
    password_stdin: PasswordStdin = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help="Save this existing API token instead of logging in with a password; `-` reads it from stdin.",
        ),
    ] = None,
) -> None:
    """Log in to the master and save the token for later commands.

    Asks for your user name and password (the password is not shown), trades them for a login token and saves it, readable by you only, in your config folder (one token per master URL). Later commands use it unless TRAINFARM_TOKEN is set.

    With --token, an API token you already have (`trainfarm tokens create`) is checked and saved instead.

    Examples:
      trainfarm login
      trainfarm --api-url http://farm.lab:8000 login --user alice
      echo "$PASSWORD" | trainfarm login --user ci --password-stdin
      trainfarm login --token -  < token.txt
    """
    api: ApiClient = ctx.obj
    url = api.base_url
    if token is not None:
        if password_stdin or user:
            raise TrainfarmError("a token names its user: give --token alone", field="--token")
        plain = read_stdin_line("token", "--token") if token == "-" else token.strip()
        expires = None
    else:
        name = user or ask("User name")
        password = (
            read_stdin_line("password", "--password-stdin")
            if password_stdin
            else ask("Password", hidden=True)
        )
        answer = _trade_password(url, name, password)
        plain, expires = answer["access_token"], answer.get("expires_at")
    with ApiClient(url, token=plain) as authed:
        try:
            me = authed.me()
        except ApiError as exc:
            if exc.status == 401:
                raise TrainfarmError(f"the master at {url} refuses that token ({exc.message})") from None
            raise
        if token is not None:
            expires = _own_token(authed, plain).get("expires_at")
    path = save_token(url, plain)
    when = render.format_time(expires) if expires else "never"
    click.echo(f"logged in to {url} as {me['name']} ({me['role']}); token saved in {path}, expires {when}")
    if api.token_source == "TRAINFARM_TOKEN":
        click.echo("note: TRAINFARM_TOKEN is set, and commands use it before the saved token", err=True)


def _trade_password(url: str, name: str, password: str) -> dict[str, Any]:
    with ApiClient(url) as anonymous:
        try:
            return anonymous.login(name, password)
        except ApiRateLimited as exc:
            wait = f"try again in {exc.retry_after} s" if exc.retry_after else "try again later"
            raise TrainfarmError(f"{exc.message}: {wait}") from None
        except ApiError as exc:
            if exc.status == 401:
                raise TrainfarmError("wrong user name or password") from None
            raise


def _own_token(api: ApiClient, plain: str) -> dict[str, Any]:
    """The listing entry of token `plain` (its expiry, id); {} where it cannot be found."""
    try:
        listed = api.list_tokens()
    except ApiError as exc:
        if exc.status != 403:  # 403: a farm without authentication has no tokens to list
            raise
        return {}
    matches = [t for t in listed if plain.startswith(t["prefix"])]
    return matches[0] if len(matches) == 1 else {}


def logout(ctx: typer.Context) -> None:
    """Revoke the saved token on the master and forget it here.

    The token is forgotten even when the master cannot be reached or no longer accepts it (it may have expired or been revoked); the message says which. A token from TRAINFARM_TOKEN is not touched: unset the variable.

    Example:
      trainfarm logout
    """
    api: ApiClient = ctx.obj
    url = api.base_url
    saved, _ = find_token(url, None)
    if not saved:
        click.echo(f"not logged in to {url}: no token saved for it in {tokens_file()}")
        if api.token_source == "TRAINFARM_TOKEN":
            click.echo("note: TRAINFARM_TOKEN is set; unset it to stop using that token", err=True)
        return
    outcome = _revoke_saved(url, saved)
    forget_token(url)
    click.echo(f"logged out of {url}: {outcome}; the token is gone from {tokens_file()}")


def _revoke_saved(url: str, saved: str) -> str:
    """Revoke `saved` on the master, if it can; what happened, for the message."""
    with ApiClient(url, token=saved, timeout=LOGOUT_TIMEOUT) as authed:
        try:
            entry = _own_token(authed, saved)
            if not entry:
                return "the master lists no such token of yours, so nothing was revoked there"
            authed.revoke_token(int(entry["id"]))
        except ApiUnreachable:
            return "the master did not answer, so the token is NOT revoked there (revoke it with `trainfarm tokens revoke` later)"
        except ApiError as exc:
            if exc.status == 401:
                return "the master no longer accepted the token (expired, revoked or its user disabled)"
            return f"the master did not revoke the token ({exc.message})"
    return f"token {entry['prefix']}... revoked on the master"


def whoami(ctx: typer.Context) -> None:
    """Show who the master takes you for, and where the token came from.

    The token is TRAINFARM_TOKEN's, else the one `trainfarm login` saved for this master, else a standalone farm's own on this machine.

    Example:
      trainfarm whoami
    """
    api: ApiClient = ctx.obj
    me = api.me()
    if not me["auth_enabled"]:
        click.echo(f"anyone ({me['role']}) at {api.base_url}; authentication is off there")
        return
    click.echo(f"{me['name']} ({me['role']}) at {api.base_url}; token from {api.token_source or 'nowhere'}")


# tokens ------------------------------------------------------------------------------------------

tokens = typer.Typer(
    help="API tokens for scripts and CI: make one, list yours (admins: anyone's), revoke one.",
    no_args_is_help=True,
)


@tokens.command("create")
def create_token(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="What it is for, e.g. ci or laptop.")],
    expires_in_days: Annotated[
        int | None,
        typer.Option(
            min=1, max=3650, metavar="DAYS", help="Stop working after this many days.  \\[default: never]"
        ),
    ] = None,
) -> None:
    """Make an API token of yours and print it: it is shown this once only.

    The token goes to stdout alone, so a script can capture it; the note about it goes to stderr.

    Examples:
      trainfarm tokens create ci --expires-in-days 90
      TOKEN=$(trainfarm tokens create nightly)
    """
    api: ApiClient = ctx.obj
    made = api.create_token(name, expires_in_days)
    when = render.format_time(made["expires_at"]) if made.get("expires_at") else "never"
    click.echo(made["token"])
    click.echo(
        f"token {made['id']} ({made['name']}) of {made['user']}, expires {when}: copy it now, "
        "it is not shown again",
        err=True,
    )


@tokens.command("list")
def list_tokens(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Option("--user", metavar="NAME", help="Admins: this user's tokens.")
    ] = None,
    every_user: Annotated[bool, typer.Option("--all", help="Admins: every user's tokens.")] = False,
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked tokens.")] = False,
) -> None:
    """List your tokens (never their values), newest first.

    Login tokens (from `trainfarm login`) and dashboard sessions are listed too, by kind; revoked ones only with --revoked.

    Examples:
      trainfarm tokens list
      trainfarm tokens list --user alice --revoked
      trainfarm tokens list --all
    """
    if user is not None and every_user:
        raise TrainfarmError("give --user or --all, not both", field="--user")
    api: ApiClient = ctx.obj
    listed = api.list_tokens(user, every_user, revoked)
    if not listed:
        click.echo("no tokens", err=True)
        return
    render.console().print(
        tokens_table(listed, with_user=every_user or user is not None, with_revoked=revoked)
    )


def tokens_table(listed: list[dict[str, Any]], *, with_user: bool, with_revoked: bool) -> Table:
    table = Table(box=None, pad_edge=False)
    columns = ["ID", *(["USER"] if with_user else []), "NAME", "PREFIX", "KIND", "CREATED", "EXPIRES"]
    columns += ["LAST USED", *(["REVOKED"] if with_revoked else [])]
    for column in columns:
        table.add_column(column, no_wrap=column != "NAME")
    for token in listed:
        cells = [str(token["id"]), *([token["user"]] if with_user else []), token["name"]]
        cells += [f"{token['prefix']}...", token["kind"], render.format_time(token["created_at"])]
        cells += [render.format_time(token["expires_at"]) if token.get("expires_at") else "never"]
        cells += [render.format_time(token.get("last_used_at"))]
        if with_revoked:
            cells.append(render.format_time(token.get("revoked_at")))
        render.add_row(table, *cells)
    return table


@tokens.command("revoke")
def revoke_token(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(metavar="ID", min=1, help="The token's id (`tokens list`).")],
) -> None:
    """Revoke a token: it stops working at once.

    Yours, or anyone's for an admin; the id is in `trainfarm tokens list`.

    Example:
      trainfarm tokens revoke 7
    """
    api: ApiClient = ctx.obj
    gone = api.revoke_token(token_id)
    click.echo(f"revoked token {gone['id']} ({gone['name']}, {gone['prefix']}...) of {gone['user']}")
