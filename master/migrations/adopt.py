"""Recognise the schema of a database that `create_all` made before migrations existed."""

from __future__ import annotations

from sqlalchemy import Connection, inspect

from master.migrations.errors import MigrationError

#: The tables every master from 8bdff0f to the first with migrations created, all at once.
TABLES = frozenset({"jobs", "job_attempts", "job_metrics", "artifacts", "datasets", "nodes"})
#: Newest first: a column of `jobs` that `create_all` made from the given revision's schema on.
MARKERS = (("warnings", "0003"), ("handbacks", "0002"))
#: The oldest schema; a database older still (none was ever released) would be stamped as this.
OLDEST = "0001"


def unversioned_revision(conn: Connection) -> str | None:
    """The revision an unversioned database's schema is at; None for an empty one."""
    present = TABLES & set(inspect(conn).get_table_names())
    if not present:
        return None
    if present != TABLES:
        raise MigrationError(
            f"the database has trainfarm's tables {sorted(present)} but not {sorted(TABLES - present)} "
            "and no schema revision: it was not made by trainfarm; give the master an empty database"
        )
    columns = {column["name"] for column in inspect(conn).get_columns("jobs")}
    return next((revision for column, revision in MARKERS if column in columns), OLDEST)
