"""Infrastructure failures as clear errors: an unreachable store, a full disk."""

from __future__ import annotations

import errno
import shutil
import threading
import time
from pathlib import Path

from sqlalchemy import Engine

from sylphx._core.errors import StorageFull, StoreUnavailable

MIN_FREE_BYTES = 1 << 20  # below this, a disk counts as full: no new shard is started


def store_unavailable(exc: BaseException, engine: Engine) -> StoreUnavailable:
    """The error for a database that cannot be reached or used, naming it and the fix."""
    url = engine.url.render_as_string(hide_password=True)
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    if engine.dialect.name == "postgresql":
        fix = (
            "check that the PostgreSQL server is running and reachable from this host"
            " and that SYLPHX_DATABASE_URL is right"
        )
    else:
        fix = "check that the disk holding the SQLite file is writable and not full"
    return StoreUnavailable(
        f"the store is unavailable ({url}): {cause[0] if cause else type(exc).__name__}."
        f" Fix: {fix}; the control plane reconnects by itself and resumes."
    )


def disk_full(path: Path, what: str, free: int | None = None) -> StorageFull:
    have = f" ({free} bytes free)" if free is not None else ""
    return StorageFull(
        f"the {what} disk at {path} is full{have}. Fix: free space there, or point"
        f" SYLPHX_HOME at a larger disk; waiting runs start once there is room."
    )


def check_disk(path: Path, what: str) -> None:
    """Raise :class:`StorageFull` when ``path``'s filesystem has (almost) no room left."""
    try:
        free = shutil.disk_usage(path).free
    except FileNotFoundError:
        return
    if free < MIN_FREE_BYTES:
        raise disk_full(path, what, free)


class DiskWatch:
    """One disk's room as last read, for a path that must not read the disk itself: a
    submit on the event loop, where a hung mount would stall every request. The
    reconciler reads it every pass (:meth:`check`), a submit in the thread pool too, so
    while runs come in a reading is never older than a pass; :meth:`fresh` says whether
    the last one is at most ``fresh`` seconds old, and ``check(cached=True)`` answers
    from it."""

    def __init__(self, path: Path, what: str, fresh: float = 1.0) -> None:
        self.path, self.what, self.max_age = path, what, fresh
        self._lock = threading.Lock()
        self._read: tuple[float, str | None] | None = None  # (when, why it is full)

    def fresh(self) -> bool:
        """Whether the last reading is at most ``fresh`` seconds old."""
        read = self._read
        return read is not None and time.monotonic() - read[0] <= self.max_age

    def check(self, *, cached: bool = False) -> None:
        """Raise :class:`StorageFull` when the disk is full (:func:`check_disk`): read
        now, blocking, and kept (unless a newer reading was kept meanwhile); with
        ``cached``, as the last reading found it, when it is fresh."""
        read = self._read
        if cached and read is not None and time.monotonic() - read[0] <= self.max_age:
            if read[1] is not None:
                raise StorageFull(read[1])  # (a new error each time: no traceback grows)
            return
        when = time.monotonic()
        try:
            check_disk(self.path, self.what)
        except StorageFull as exc:
            self._keep(when, exc.message)
            raise
        self._keep(when, None)

    def _keep(self, when: float, full: str | None) -> None:
        with self._lock:  # a slow read never overwrites a newer one (an attack review)
            if self._read is None or when >= self._read[0]:
                self._read = when, full


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
