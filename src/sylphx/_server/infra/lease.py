"""The reconciler lease: however many API processes share a store, one reconciler acts.

PostgreSQL: a session-level advisory lock held on a dedicated connection, so it passes on
as soon as its holder dies (the server closes the connection) or loses the database.
SQLite: an ``flock`` on ``<home>/reconciler.lock``, released by the kernel when the holder
dies (a SQLite store is only ever shared by processes of one host).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text

from .private import open_private

log = logging.getLogger("sylphx.lease")
ADVISORY_KEY = 0x5F1C0DE  # arbitrary, constant: "the sylphx reconciler"


class Lease:
    """Try-acquire, verify and release the right to reconcile."""

    def __init__(self, engine: Engine, home: Path) -> None:
        self.engine = engine
        self.path = home / "reconciler.lock"
        self._conn: Connection | None = None
        self._fh: IO[str] | None = None

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def held(self) -> bool:
        """Whether this process held the lease at its last :meth:`ensure` (no I/O: safe
        to read from any thread; /readyz reports it)."""
        return self._conn is not None or self._fh is not None

    def ensure(self) -> bool:
        """True while this process holds the lease (acquiring it if free)."""
        if self.postgres:
            return self._ensure_pg()
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open_private(self.path)  # held open while we hold the lease
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                return False
            self._fh = fh
        return True

    def _ensure_pg(self) -> bool:
        if self._conn is not None:
            try:  # the lock lives exactly as long as this connection
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("lost the database connection that held the reconciler lease")
                self._drop()
        conn = self.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            held = bool(got.scalar())
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not held:
            conn.close()
            return False
        self._conn = conn
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                self._conn.commit()
            self._drop()
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
