"""Database engine and schema: SQLite (WAL) by default, PostgreSQL by URL, same code for both."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlmodel import create_engine

from master import migrations, models  # noqa: F401  (models registers the tables on SQLModel.metadata)

log = logging.getLogger("trainfarm.master")


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # WAL lets the API read while the event consumer writes; NORMAL is durable in WAL mode
        # against process crashes, which is what a farm's master has to survive.
        cur = dbapi_conn.cursor()
        _enter_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    _queue_writers(engine)
    return engine


def _enter_wal(cur: sqlite3.Cursor) -> None:
    # Switching a new database file to WAL needs it to itself for a moment, and SQLite answers
    # "locked" at once rather than through the busy timeout when another process's first
    # connection holds it (two masters starting on one new file): try again for a few seconds.
    deadline = time.monotonic() + 10
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


#: Statements before which sqlite3 opens a transaction, and SQLite takes its one write lock.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")
_HOLDS = "trainfarm_write_lock"


def _queue_writers(engine: Engine) -> None:
    """Let this process's writers wait their turn on a lock instead of in SQLite.

    SQLite has one writer at a time, and a writer that finds the database locked sleeps in growing
    steps (1 ms up to 100 ms) before it looks again; with 16 clients submitting, the unlucky ones
    waited a second (bench/submit.py). The lock is taken where SQLite takes its own, at a
    transaction's first write, and given back once the transaction has committed or rolled back.
    """
    lock = threading.Lock()

    @event.listens_for(engine, "before_cursor_execute")
    def _take(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if conn.info.get(_HOLDS) or statement.lstrip()[:6].upper() not in _WRITES:
            return
        if not lock.acquire(timeout=30):  # as long as sqlite3's own busy timeout
            raise sqlite3.OperationalError("database is locked")
        conn.info[_HOLDS] = True

    def _give_back(dbapi_conn, info, end) -> None:  # type: ignore[no-untyped-def]
        if info.pop(_HOLDS, False):
            try:
                # Ended here, before SQLAlchemy's own commit or rollback (then a no-op), so the
                # next writer never finds SQLite still locked and goes to sleep.
                end(dbapi_conn)
            finally:
                lock.release()

    @event.listens_for(engine, "commit")
    def _commit(conn):  # type: ignore[no-untyped-def]
        if not conn.invalidated:  # else the pool's invalidate event gave the lock back
            _give_back(conn.connection.dbapi_connection, conn.info, lambda c: c.commit())

    @event.listens_for(engine, "rollback")
    def _rollback(conn):  # type: ignore[no-untyped-def]
        if not conn.invalidated:
            _give_back(conn.connection.dbapi_connection, conn.info, lambda c: c.rollback())

    # A connection returned, reset or dropped with its transaction still open.
    def _on_pool(dbapi_conn, record):  # type: ignore[no-untyped-def]
        if dbapi_conn is not None and record is not None:
            _give_back(dbapi_conn, record.info, lambda c: c.rollback())

    for name in ("checkin", "close", "detach"):
        event.listen(engine.pool, name, _on_pool)
    for name in ("reset", "invalidate", "soft_invalidate"):  # these pass a third argument
        event.listen(engine.pool, name, lambda dbapi_conn, record, _: _on_pool(dbapi_conn, record))


def init_db(engine: Engine) -> None:
    """Bring the schema to the newest revision: create it in an empty database, adopt one made
    before migrations existed, apply what is missing (`master.migrations`)."""
    before, after = migrations.upgrade(engine)
    if before.revision != after.revision:
        was = before.revision or (f"unversioned, at {before.unversioned}" if before.unversioned else "empty")
        log.info("database schema upgraded to %s (was %s)", migrations.describe(after.revision), was)
