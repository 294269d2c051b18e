"""One SQLite writer at a time in this process, queued in Python rather than in SQLite.

SQLite lets one transaction write at a time; a ``BEGIN IMMEDIATE`` that finds the write
lock taken waits in SQLite's busy handler, which sleeps and retries (1, 2, 5, 10 ... 100 ms
between tries). Under concurrent submits (16 clients and the reconciler) those sleeps
were most of a submit's latency: a p99 of 2-4 s with the lock free most of the time
(bench P7). So this process's writers first queue on a ``threading.Lock`` held from their
``BEGIN IMMEDIATE`` to the end of their COMMIT or ROLLBACK: a waiter is woken the moment
the writer before it ends. SQLite still does the locking that counts (other processes
still meet its busy handler): this lock only orders this process's writers. A writer
that cannot take it within the busy timeout goes ahead anyway and lets SQLite decide.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, event

__all__ = ["WAIT_SECONDS", "WriteLock", "install"]

WAIT_SECONDS = 30.0  # the connections' busy timeout: waiting longer changes nothing


class WriteLock:
    """The lock, and which DBAPI connection holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None  # id() of the DBAPI connection that holds it

    def acquire(self, conn: Any) -> None:
        """Wait for it (at most the busy timeout) for ``conn``: a DBAPI connection, or
        the pool's proxy of one."""
        if self._lock.acquire(timeout=WAIT_SECONDS):
            self._holder = id(_raw(conn))

    def release(self, conn: Any) -> None:
        """Give it back if ``conn`` holds it."""
        if self._holder is not None and self._holder == id(_raw(conn)):
            self._holder = None
            self._lock.release()


def _raw(conn: Any) -> Any:
    """The DBAPI connection itself (the pool hands its proxy to the dialect)."""
    return getattr(conn, "dbapi_connection", None) or conn


def install(engine: Engine) -> WriteLock:
    """Order ``engine``'s ``BEGIN IMMEDIATE`` transactions (see the module) through one
    lock, which its begin event takes (:meth:`WriteLock.acquire`) before it emits BEGIN
    IMMEDIATE; it is given back once the DBAPI commit or rollback has run, or the
    connection is closed or invalidated."""
    lock = WriteLock()
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_conn: Any) -> None:
        try:
            commit(dbapi_conn)
        finally:
            lock.release(dbapi_conn)

    def do_rollback(dbapi_conn: Any) -> None:
        try:
            rollback(dbapi_conn)
        finally:
            lock.release(dbapi_conn)

    # the dialect instance is this engine's own (and its execution_options() copies')
    dialect.do_commit = do_commit  # type: ignore[method-assign,assignment]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign,assignment]

    @event.listens_for(engine, "close")
    def _closed(dbapi_conn: Any, _record: Any) -> None:
        lock.release(dbapi_conn)

    @event.listens_for(engine, "invalidate")
    def _invalidated(dbapi_conn: Any, _record: Any, _exc: Any) -> None:
        lock.release(dbapi_conn)

    return lock
