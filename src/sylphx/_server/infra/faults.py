"""Infrastructure failures as clear errors: an unreachable store, a full disk."""

from __future__ import annotations

import errno
import shutil
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


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
