"""Files of the control plane that no other local user may open.

A lock file only needs to be opened to be held: ``flock`` works on a read-only handle. So
``controller.lock``, ``reconciler.lock`` and a store's ``migrate.lock``, made 0644 by the
umask, let any local user of a shared machine hold them and keep the control plane from
starting, reconciling or migrating (found by a review). They are made, and kept, 0600.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

__all__ = ["open_private"]


def open_private(path: Path | str) -> IO[str]:
    """``path`` opened for reading and appending (created if need be), mode 0600 whoever
    made it before."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "a+")
    except BaseException:
        os.close(fd)
        raise
