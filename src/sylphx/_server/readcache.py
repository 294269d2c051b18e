"""The hot read path's in-process helpers. Each ``--workers`` process has its own.

* :class:`KeyCache` remembers which org a key hash authenticated as for ``ttl`` seconds
  from the store lookup that vouched for it (not from its last use). A key revoked in the
  store is therefore refused by every API process within ``ttl`` seconds
  (``SYLPHX_AUTH_CACHE_SECONDS``, default 1; 0 turns the cache off). Failed lookups are
  never cached, so a new key works at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["KeyCache"]


class KeyCache:
    """key hash -> org id, each entry valid for ``ttl`` seconds after its store lookup."""

    def __init__(
        self, ttl: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> str | None:
        """The org id, if a store lookup vouched for this key less than ``ttl`` ago."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        org_id, expires = entry
        if self._clock() >= expires:
            with self._lock:
                if self._entries.get(key_hash) == entry:
                    del self._entries[key_hash]
            return None
        return org_id

    def put(self, key_hash: str, org_id: str, checked_at: float) -> None:
        """Remember a successful store lookup that started at ``checked_at`` (clock time
        taken before the lookup, so a revocation committed meanwhile is still bounded)."""
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # keys are random: no working set worth an LRU
            self._entries[key_hash] = (org_id, checked_at + self.ttl)

    def now(self) -> float:
        return self._clock()
