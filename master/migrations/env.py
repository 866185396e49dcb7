"""Alembic's entry point, run by `master.migrations`: always online, on the connection it is given.

There is no alembic.ini: `master.migrations.config()` builds the configuration in code and passes
the connection in `config.attributes`, so an installed master migrates from any working directory.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from master import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from master.migrations.compare import configure_options

if context.is_offline_mode():
    raise SystemExit("trainfarm migrations run against a database; offline (--sql) mode is not supported")

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=SQLModel.metadata,
    **configure_options(),
)
with context.begin_transaction():
    context.run_migrations()
