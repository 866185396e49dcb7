"""What `trainfarm db` does, with the master's packages (SQLAlchemy, Alembic): imported only when
a `db` command runs, so the CLI works on a compute node, which has none of them."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from master import migrations
from master.db import make_engine
from shared.errors import TrainfarmError
from shared.settings import Settings, get_settings

#: What to do about a database that is not at head.
UPGRADE_HINT = "run `trainfarm db upgrade` or start the master"


def upgrade(database_url: str | None) -> str:
    """Upgrade to head; what happened, in one line."""
    with _database(database_url) as engine:
        before, after = migrations.upgrade(engine)
    now = migrations.describe(after.revision)
    if before.revision == after.revision:
        return f"database already at {now}, the newest"
    if before.revision is not None:
        was = migrations.describe(before.revision)
    elif before.unversioned is not None:
        was = f"{migrations.describe(before.unversioned)}, made before migrations"
    else:
        was = "an empty database"
    return f"database upgraded from {was} to {now}"


def current(database_url: str | None) -> str:
    """Where the schema stands, in one line."""
    with _database(database_url, existing=True) as engine:
        state = migrations.state(engine)
    head = migrations.describe(state.head)
    if state.at_head:
        return f"{head}, the newest"
    if state.revision is not None:
        return f"{migrations.describe(state.revision)}; the newest is {head}: {UPGRADE_HINT}"
    if state.unversioned is not None:
        at = migrations.describe(state.unversioned)
        return f"no revision recorded (made before migrations; its schema is at {at}): {UPGRADE_HINT}"
    return f"empty, no schema yet: {UPGRADE_HINT}"


class _database:
    """The engine for `url` (or the configured database); database failures become one line.
    `existing`: a SQLite file that is not there is an error (a wrong data dir), not a new database."""

    def __init__(self, url: str | None, existing: bool = False) -> None:
        self.existing = existing
        try:
            # Through Settings, so a URL given here is normalised like the master's own.
            self.url = (Settings(database_url=url) if url else get_settings()).database_url
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise TrainfarmError(f"invalid TRAINFARM_* settings: {problems}") from None
        self.engine: Engine | None = None

    def __enter__(self) -> Engine:
        try:
            parsed = make_url(self.url)
            path = parsed.database if parsed.get_backend_name() == "sqlite" else None
            if self.existing and path and path != ":memory:" and not Path(path).exists():
                raise TrainfarmError(
                    f"no database at {path}: set TRAINFARM_DATA_DIR or TRAINFARM_DATABASE_URL as the "
                    "master has them, or pass --database-url",
                    field="database_url",
                )
            self.engine = make_engine(self.url)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise TrainfarmError(f"invalid database URL {self.url!r}: {exc}", field="database_url") from None
        except ModuleNotFoundError as exc:  # the driver: psycopg comes with trainfarm[postgres]
            raise TrainfarmError(f"no driver for {self.url!r}: {exc}", field="database_url") from None
        return self.engine

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.engine is not None:
            self.engine.dispose()
        if isinstance(exc, SQLAlchemyError):
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            shown = self.engine.url.render_as_string() if self.engine is not None else self.url
            raise TrainfarmError(f"database {shown}: {cause}") from None
