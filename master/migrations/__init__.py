"""Schema migrations (Alembic). The master upgrades its database to head when it starts
(`master.db.init_db`); `trainfarm db upgrade` does the same by hand and `trainfarm db current` tells
where a database stands.

Revisions, oldest first (`versions/`):

- 0001: the schema as `create_all` made it at commit 8bdff0f, the oldest a farm may still run;
- 0002: `jobs.handbacks`: after it the schema is c0411ab's, the baseline when migrations arrived;
- 0003: `jobs.warnings`.

The chain starts before the baseline so that every schema a master has ever made is a revision.
A database made before migrations existed has the tables but no `alembic_version`; adopting it is
then only recognising which revision its schema is at (`adopt.unversioned_revision`) and stamping
it, and every change to its rows is an ordinary migration, tested like the others. An empty
database upgrades from nothing through the same chain.

There is no alembic.ini: `config()` builds Alembic's configuration in code, pointing at this
package, so an installed master migrates from any working directory.

One upgrade at a time: on PostgreSQL the whole upgrade is one transaction (its DDL is
transactional) that first takes an advisory lock, so a second master starting at the same moment
waits, then finds the database at head. On SQLite the upgrade runs in one `BEGIN IMMEDIATE`
transaction, which holds the database's write lock from the first statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from master.migrations.adopt import unversioned_revision
from master.migrations.errors import MigrationError

HERE = Path(__file__).resolve().parent
#: Key of the PostgreSQL advisory lock that one upgrade at a time holds: any 64-bit constant that no
#: other program on the database uses.
LOCK_KEY = int.from_bytes(b"tfschema", "big")


@dataclass(frozen=True)
class DatabaseState:
    """Where a database stands against this trainfarm's migrations."""

    #: Revision recorded in `alembic_version`; None when there is none (empty or pre-migrations).
    revision: str | None
    #: For a database made before migrations existed: the revision its schema is at.
    unversioned: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.revision == self.head


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def describe(revision: str | None) -> str:
    """`0002 (jobs.handbacks ...)`: a revision with the first line of its docstring."""
    if revision is None:
        return "none"
    script = scripts().get_revision(revision)
    doc = script.doc.splitlines()[0] if script is not None and script.doc else ""
    return f"{revision} ({doc})" if doc else revision


def state(engine: Engine) -> DatabaseState:
    with engine.connect() as conn:
        return _state(conn)


def upgrade(engine: Engine) -> tuple[DatabaseState, DatabaseState]:
    """Bring the database to head (stamping one made before migrations first); the states before
    and after."""
    with engine.connect() as conn, _one_upgrader(conn):
        before = _state(conn)
        if before.revision is None and before.unversioned is not None:
            command.stamp(config(conn), before.unversioned)
        command.upgrade(config(conn), "head")
        return before, _state(conn)


def _state(conn: Connection) -> DatabaseState:
    directory = scripts()
    head = directory.get_current_head()
    assert head is not None, "master/migrations/versions holds no revision"
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is not None and revision not in {s.revision for s in directory.walk_revisions()}:
        raise MigrationError(
            f"the database is at schema revision {revision}, which this trainfarm does not know "
            f"(its newest is {head}): it was upgraded by a newer trainfarm; run that one"
        )
    return DatabaseState(revision, unversioned_revision(conn) if revision is None else None, head)


@contextmanager
def _one_upgrader(conn: Connection) -> Iterator[None]:
    """Run the block as one transaction that no other upgrader can enter until it has committed."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        # Rebuilding a table in batch mode drops the old one; with foreign keys on, SQLite would
        # refuse (or cascade) while rows still point at it. Its documented way: keys off for the
        # change, then a check that nothing dangles before the commit.
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(CAST(:key AS bigint))"), {"key": LOCK_KEY})
    try:
        yield
        if dialect == "sqlite" and (dangling := conn.exec_driver_sql("PRAGMA foreign_key_check").all()):
            raise MigrationError(f"the upgrade would leave rows pointing at nothing: {dangling[:5]}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        if dialect == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
