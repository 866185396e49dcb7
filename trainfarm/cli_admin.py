"""`trainfarm admin`: account commands for the master's host that need no token, because they write
to the master's database directly (the first admin of a farm set up by hand, or a way back in when
every admin is locked out)."""

from __future__ import annotations

import re
from types import ModuleType
from typing import Annotated

import click
import typer

from shared.errors import TrainfarmError
from shared.roles import USER_NAME_PATTERN, Role
from trainfarm.cli_auth import PasswordStdin, new_password
from trainfarm.cli_db import DatabaseUrl

admin = typer.Typer(
    help="On the master's host, with no token: make users straight in the master's database.",
    no_args_is_help=True,
)


@admin.command("create-user")
def create_user(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The new user's name.", show_default=False)],
    role: Annotated[Role, typer.Option(case_sensitive=False, help="admin, member or viewer.")] = Role.ADMIN,
    password_stdin: PasswordStdin = False,
    token_name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Also make an API token of this name for the user, and print it (once).",
        ),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Make a user (an admin unless --role says otherwise) in the master's database directly.

    Runs where the master runs, with its TRAINFARM_* settings (or --database-url); the database is brought to the newest schema first. The password is typed twice (hidden) or read from stdin. The audit trail records it with no actor: the farm itself.

    Examples:
      trainfarm admin create-user alice
      printf '%s\\n' "$PASSWORD" | trainfarm admin create-user ci --role member --password-stdin --token-name ci
    """
    # Checked before the password prompt; the API checks the same, but this path skips the API.
    if not re.fullmatch(USER_NAME_PATTERN, name):
        raise TrainfarmError(
            f"'{name}' is no user name: letters, digits, '.', '_' and '-', at most 64, starting with a "
            "letter or digit",
            field="NAME",
        )
    if token_name is not None and not 1 <= len(token_name) <= 64:
        raise TrainfarmError("a token name has 1 to 64 characters", field="--token-name")
    password = new_password(password_stdin)
    made = _accounts().create_user(database_url, name, role, password, token_name)
    click.echo(f"created user {made.name} ({made.role}) in {made.database}")
    if made.token is not None:
        click.echo(made.token)
        click.echo(f"API token '{token_name}' of {made.name}: copy it now, it is not shown again", err=True)


def _accounts() -> ModuleType:
    """The master-side half, imported only now: a worker node has none of the master's packages."""
    try:
        from trainfarm import admin_accounts
    except ModuleNotFoundError as exc:
        raise TrainfarmError(
            f"`trainfarm admin` needs the master's packages ({exc.name} is not installed here): "
            "run it where the master runs"
        ) from None
    return admin_accounts


@admin.command("signing-key")
def signing_key(
    new_into: Annotated[
        str | None,
        typer.Option(
            "--new-into",
            metavar="FILE",
            help="Make a new key pair: the private key goes into FILE (owner-only, for the master's "
            "TRAINFARM_SIGNING_KEY_FILE or the Docker secret trainfarm_signing_key); the public key is printed.",
        ),
    ] = None,
) -> None:
    """Print the public key workers verify task messages with (TRAINFARM_SIGNING_PUBLIC_KEY).

    Runs where the master runs, with its TRAINFARM_* settings: the key is the master's
    TRAINFARM_SIGNING_KEY, else the file TRAINFARM_SIGNING_KEY_FILE (default <data dir>/signing.key),
    made now if there is none. Only the master holds the private key; every worker needs the public one.

    Examples:
      trainfarm admin signing-key
      trainfarm admin signing-key --new-into ./secrets/trainfarm_signing_key
    """
    from pathlib import Path

    from shared.private_files import write_private
    from shared.settings import get_settings
    from shared.signing import master_private_key, new_private_key, private_key_text, public_key_text

    if new_into is not None:
        path = Path(new_into)
        if path.exists():
            raise TrainfarmError(
                f"{path} exists: the farm's workers may trust it; remove it first", field="--new-into"
            )
        key = new_private_key()
        write_private(path, private_key_text(key) + "\n")
        click.echo(public_key_text(key.public_key()))
        return
    try:
        key = master_private_key(get_settings())
    except ValueError as exc:
        raise TrainfarmError(str(exc), field="TRAINFARM_SIGNING_KEY") from None
    click.echo(public_key_text(key.public_key()))
