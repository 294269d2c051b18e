"""The hot read path's in-process helpers: API key -> org, the bytes of terminal runs, and
shared reads of active runs. Each ``--workers`` process has its own; all are bounded.

* :class:`KeyCache` remembers which org a key hash authenticated as for ``ttl`` seconds
  from the store lookup that vouched for it (not from its last use). A key revoked in the
  store is therefore refused by every API process within ``ttl`` seconds
  (``SYLPHX_AUTH_CACHE_SECONDS``, default 1; 0 turns the cache off). Failed lookups are
  never cached, so a new key works at once.
* :class:`TerminalViews` keeps the JSON of ended runs (terminal, no attempt left open) for
  ``ttl`` seconds. The reconciler only touches active runs and cancelling a terminal run
  is a no-op; only a retry (``POST /v1/runs/{id}/retry``) reopens one. The process that
  took the retry drops its copy at once; every other ``--workers`` process sees the
  reopened run within ``ttl`` (2 s): one store read per ended run and ttl at most.
* :class:`SharedReads` runs at most ``slots`` store reads at once, and requests for the same
  run that arrive while its read still waits for a slot share that read. A read starts
  after every request it answers arrived, so no answer is older than its request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from starlette.concurrency import run_in_threadpool

__all__ = ["KeyCache", "SharedReads", "TerminalViews"]


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
    """run id -> (org id, JSON bytes, expiry) of ended runs, each for ``ttl`` seconds from
    the read that found it ended; least recently used entries go first beyond
    ``max_entries``."""

    def __init__(
        self,
        max_entries: int = 4096,
        *,
        ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str, org_id: str) -> bytes | None:
        """The bytes, only for the run's own org (others fall through to a 404)."""
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None or entry[0] != org_id:
                return None
            if self._clock() >= entry[2]:
                del self._entries[run_id]
                return None
            self._entries.move_to_end(run_id)
            return entry[1]

    def now(self) -> float:
        return self._clock()

    def drop(self, run_id: str) -> None:
        """Forget the run (it was deleted, or reopened by a retry)."""
        with self._lock:
            self._entries.pop(run_id, None)

    def put(self, run_id: str, org_id: str, body: bytes, read_at: float | None = None) -> None:
        """Remember the view of an ended run read at ``read_at`` (clock time taken before
        the read: a retry committed meanwhile is still seen within ``ttl``)."""
        expires = (self._clock() if read_at is None else read_at) + self.ttl
        with self._lock:
            self._entries[run_id] = (org_id, body, expires)
            self._entries.move_to_end(run_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class SharedReads:
    """Store reads of active runs, ``slots`` at a time (SQLite reads are CPU work in this
    process: more threads than that only fight over the GIL). A read waiting for a slot is
    shared by every request with the same key that arrives before it starts."""

    def __init__(self, slots: int) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._waiting: dict[Hashable, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, key: Hashable, fn: Callable[[], bytes]) -> bytes:
        """``fn()`` run in the thread pool, or the result of a read of ``key`` that has not
        started yet; its exception, if it raised."""
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._run(key, future, fn))
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)  # one caller going away cancels no one else's

    async def _run(
        self, key: Hashable, future: asyncio.Future[bytes], fn: Callable[[], bytes]
    ) -> None:
        try:
            async with self._slots:
                if self._waiting.get(key) is future:  # later arrivals: a read starting later
                    del self._waiting[key]
                future.set_result(await run_in_threadpool(fn))
        except BaseException as exc:
            if self._waiting.get(key) is future:
                del self._waiting[key]
            if future.done():
                pass
            elif isinstance(exc, asyncio.CancelledError):  # shutting down: cancel the waiters
                future.cancel()
            else:
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
