"""The hot read path's in-process helpers: API key -> org, and the bytes of terminal runs.
Each ``--workers`` process has its own; both are bounded.

* :class:`KeyCache` remembers which org a key hash authenticated as for ``ttl`` seconds
  from the store lookup that vouched for it (not from its last use). A key revoked in the
  store is therefore refused by every API process within ``ttl`` seconds
  (``SYLPHX_AUTH_CACHE_SECONDS``, default 1; 0 turns the cache off). Failed lookups are
  never cached, so a new key works at once.
* :class:`TerminalViews` keeps the JSON of runs that can no longer change: terminal, with
  no attempt left open. The reconciler only touches active runs and cancelling a
  terminal run is a no-op, so these bytes stay exact.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["KeyCache", "TerminalViews"]


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


class TerminalViews:
    """run id -> (org id, JSON bytes) of runs whose view is final; least recently used
    entries go first beyond ``max_entries``."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str, org_id: str) -> bytes | None:
        """The bytes, only for the run's own org (others fall through to a 404)."""
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None or entry[0] != org_id:
                return None
            self._entries.move_to_end(run_id)
            return entry[1]

    def put(self, run_id: str, org_id: str, body: bytes) -> None:
        with self._lock:
            self._entries[run_id] = (org_id, body)
            self._entries.move_to_end(run_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
