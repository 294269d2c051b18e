"""One control plane per SYLPHX_HOME: an exclusive lock held for the server's life."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from sylphx._core.errors import ServerUnavailable

from .private import open_private


class HomeLock:
    """``flock`` on ``<home>/controller.lock``; released by the kernel if we die."""

    def __init__(self, home: Path) -> None:
        self.path = home / "controller.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open_private(self.path)  # held open for the server's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ServerUnavailable(
                f"another sylphx control plane (pid {holder}) is using {self.path.parent}."
                " Fix: stop it (`sylphx local stop`) or set another SYLPHX_HOME."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
