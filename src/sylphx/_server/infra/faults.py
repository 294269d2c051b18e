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
    while runs come in a reading is never older than a pass. Only room is taken on
    trust (:meth:`roomy`): a disk last seen full is read again before anyone is refused,
    so space freed a moment ago is seen at once."""

    def __init__(self, path: Path, what: str, fresh: float = 1.0) -> None:
        self.path, self.what, self.fresh = path, what, fresh
        self._lock = threading.Lock()
        self._read: tuple[float, bool] | None = None  # (when it began, room found)

    def roomy(self) -> bool:
        """Whether a reading at most ``fresh`` seconds old found room."""
        read = self._read
        return read is not None and read[1] and time.monotonic() - read[0] <= self.fresh

    def check(self) -> None:
        """Read the disk now (blocking) and keep the reading, unless a newer one was kept
        meanwhile; :class:`StorageFull` when it is full (:func:`check_disk`)."""
        when = time.monotonic()
        try:
            check_disk(self.path, self.what)
        except StorageFull:
            self._keep(when, False)
            raise
        self._keep(when, True)

    def _keep(self, when: float, room: bool) -> None:
        with self._lock:  # a slow read never overwrites a newer one (an attack review)
            if self._read is None or when >= self._read[0]:
                self._read = when, room


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
