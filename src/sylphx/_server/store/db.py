"""Engine set-up and migrations: SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from sylphx._server.infra.private import open_private

from . import runwrites, writelock

MIGRATIONS = Path(__file__).with_name("migrations")
# Kept-open SQLite connections: enough for every thread of the API's thread pool (anyio's
# default is 40), so a burst of reads reuses connections instead of opening new ones (each
# open runs the PRAGMAs below). An idle SQLite connection costs little memory.
SQLITE_POOL_SIZE = 40


# PostgreSQL's deadlock_detected and serialization_failure: the transaction lost a race.
_LOST_RACE = frozenset({"40P01", "40001"})


def lost_race(exc: BaseException) -> bool:
    """Whether ``exc`` says the transaction lost to a concurrent writer and may simply be
    run again: a compare-and-set that matched no row, or PostgreSQL breaking a deadlock."""
    if isinstance(exc, StaleDataError):
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(exc, DBAPIError) and state in _LOST_RACE


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=SQLITE_POOL_SIZE,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        lock = writelock.install(engine)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers that check-then-insert (quota reservations) ask for IMMEDIATE, which
            # takes the write lock up front; everything else stays DEFERRED and concurrent.
            # This process's writers queue for it in Python first (see writelock).
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            if mode != "IMMEDIATE":
                conn.exec_driver_sql(f"BEGIN {mode}")
                return
            dbapi_conn = conn.connection
            lock.acquire(dbapi_conn)
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                lock.release(dbapi_conn)
                raise

        return engine
    return create_engine(url, pool_pre_ping=True)


MIGRATE_LOCK_KEY = 0x5F1C0DF  # PostgreSQL advisory lock: one migrator at a time


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; concurrent callers, e.g.
    several API workers starting at once, take turns)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with contextlib.ExitStack() as stack:
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            fh = stack.enter_context(open_private(f"{database}.migrate.lock"))
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def revision(engine: Engine) -> str | None:
    """The store's current Alembic revision (None before the first migration)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for work that writes: on SQLite they take the write lock when they begin
    (``BEGIN IMMEDIATE``), so a read-then-write never fails on a stale snapshot."""
    writer = engine.execution_options(sqlite_begin="IMMEDIATE")
    sessions = sessionmaker(writer, expire_on_commit=False)
    runwrites.install(sessions)  # changed runs written in batches (compare-and-set)
    return sessions


def read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read: concurrent with each other and with the writer."""
    return sessionmaker(engine, expire_on_commit=False)
