"""Tools for writing migrations, run from a checkout:

    python -m master.migrations new "jobs.owner"   # write versions/NNNN_jobs_owner.py from the models
    python -m master.migrations check              # what the models have that no migration makes

Both upgrade a scratch SQLite database to head and compare the models with it, as autogenerate
does; `new` writes what it finds as the next numbered revision, to be read, completed (data,
server defaults for new NOT NULL columns) and tested before it is committed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from alembic import command

from master import migrations
from master.db import make_engine
from master.migrations.compare import diff


def _scratch_at_head(directory: str) -> str:
    url = f"sqlite:///{Path(directory) / 'scratch.db'}"
    migrations.upgrade(make_engine(url))
    return url


def new(message: str, into: Path | None = None) -> Path:
    """Write the next revision into versions/ (or into `into`, a folder read beside it: tests)."""
    head = migrations.scripts().get_current_head()
    rev_id = f"{int(head or '0') + 1:04d}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(_scratch_at_head(tmp))
        with engine.connect() as conn:
            cfg = migrations.config(conn)
            if into is not None:
                cfg.set_main_option("path_separator", "os")
                cfg.set_main_option(
                    "version_locations", os.pathsep.join([str(migrations.HERE / "versions"), str(into)])
                )
            script = command.revision(
                cfg, message=message, autogenerate=True, rev_id=rev_id, version_path=into and str(into)
            )
        engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


def check() -> list[object]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(_scratch_at_head(tmp))
        with engine.connect() as conn:
            found = diff(conn)
        engine.dispose()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m master.migrations", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("new", help="write the next revision from the models").add_argument("message")
    commands.add_parser("check", help="list what the models have that no migration makes")
    args = parser.parse_args(argv)
    if args.command == "new":
        print(f"wrote {new(args.message)}: read it, complete it, add a test")
        return 0
    found = check()
    for difference in found:
        print(difference)
    print("models and migrations agree" if not found else f"{len(found)} difference(s): write a migration")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
