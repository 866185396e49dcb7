"""`trainfarm db`: where the master's database schema stands, and upgrading it by hand (the master
also upgrades it whenever it starts)."""

from __future__ import annotations

from types import ModuleType
from typing import Annotated

import click
import typer

from shared.errors import TrainfarmError

db = typer.Typer(
    help="The master's database schema: show its revision, or upgrade it to the newest "
    "(the master does this too when it starts).",
    no_args_is_help=True,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        help="The master's database, e.g. sqlite:////srv/farm/master.db or postgresql://user@host/db.  "
        "\\[default: $TRAINFARM_DATABASE_URL, else master.db in $TRAINFARM_DATA_DIR]",
        show_default=False,
    ),
]


@db.command()
def upgrade(database_url: DatabaseUrl = None) -> None:
    """Upgrade the database to the newest schema revision, keeping every row.

    An empty database gets the whole schema; one made before trainfarm had migrations is
    recognised and brought up to date. Safe to run while another master starts: one upgrade runs
    at a time.

    Examples:
      trainfarm db upgrade
      trainfarm db upgrade --database-url postgresql://trainfarm@db.lab/trainfarm
    """
    click.echo(_admin().upgrade(database_url))


@db.command()
def current(database_url: DatabaseUrl = None) -> None:
    """Show the database's schema revision and whether it is the newest.

    Example:
      trainfarm db current
    """
    click.echo(_admin().current(database_url))


def _admin() -> ModuleType:
    """The master-side half; a node without the master's packages gets one line, not a traceback."""
    try:
        from trainfarm import db_admin
    except ModuleNotFoundError as exc:
        raise TrainfarmError(
            f"`trainfarm db` needs the master's packages ({exc.name} is not installed here): "
            "run it where the master runs"
        ) from None
    return db_admin
