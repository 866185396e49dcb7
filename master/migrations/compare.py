"""How models and migrations are compared and rendered: one set of options for `env.py`, the
agreement test and `python -m master.migrations new`, so the three cannot drift apart."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.migration import MigrationContext
from sqlalchemy import Connection, MetaData
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from master import models  # noqa: F401  (registers the tables on SQLModel.metadata)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write a decorated type (`StatusColumn`, sqlmodel's `AutoString`, `UTCDateTime`) as the plain
    SQLAlchemy type it stores as, so a migration never imports the models it freezes in time."""
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def configure_options() -> dict[str, Any]:
    return {
        # Batch mode: SQLite cannot ALTER most things, so a batch copies the table where needed.
        "render_as_batch": True,
        # Types are compared (a VARCHAR(16) that became TEXT is a diff); server defaults are not:
        # migrations set them so old rows get a value, while the models fill values in Python.
        "compare_type": True,
        "compare_server_default": False,
        "render_item": render_item,
    }


def diff(connection: Connection, metadata: MetaData | None = None) -> list[Any]:
    """What autogenerate finds between the models (or `metadata`) and the database on `connection`:
    empty when the migrations that made that database agree with them."""
    context = MigrationContext.configure(connection, opts=configure_options())
    return compare_metadata(context, metadata if metadata is not None else SQLModel.metadata)
