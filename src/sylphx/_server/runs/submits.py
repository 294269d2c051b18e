"""Group commit of submits: the submits that arrive together are stored in one transaction.

A submit is one short write transaction (the org's row locked, its budget checked, the run
and its shards inserted). On SQLite only one writer runs at a time, so under concurrent
submits each waited for the write lock, and the commit, on its own. Here the submits that
arrive while a transaction is under way queue; when it ends, the committer (one thread of
its own, started with the first submit) stores every queued submit (up to ``MAX_BATCH``)
in one transaction, commits, and only then answers each -- so every 201 still follows its
run's durable commit. No wait for company: a lone submit is stored in a batch of one at
once. The API's submits wait for their answer without a thread (:meth:`GroupCommit.wait`:
the committer resolves their future), so a submit costs no hop to the thread pool.

Inside a batch each submit is checked as if it were alone and after the ones before it:
the org's row is locked once (FOR UPDATE on PostgreSQL; SQLite's write lock), its
shards in use counted once and then kept up to date as the batch reserves them, so the
concurrent-shard budget never overshoots. A refusal (429, 402, 404, 409) raises before
that submit writes anything, so it is answered alone and the batch goes on. Any other
failure rolls the whole batch back, and each of its submits is then stored alone in its
own transaction (where the one that fails, fails alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sylphx._core.ids import new_id
from sylphx._core.spec import RunSpec

__all__ = ["MAX_BATCH", "GroupCommit", "Submit"]

MAX_BATCH = 128  # submits stored in one transaction at most


@dataclass(eq=False)
class Submit:
    """One queued submit and, once its batch has committed, its answer."""

    spec: RunSpec
    org_id: str
    key: str | None
    # its run's id, chosen before any transaction: a batch whose COMMIT went through but
    # raised (the acknowledgement lost) is stored again one by one, and each then finds
    # its run instead of storing a second one
    run_id: str = field(default_factory=lambda: new_id("wrk"))
    body: bytes | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    # called (in the committer) once it is answered: wakes an asyncio waiter
    on_done: Callable[[], None] | None = None

    def answer(self) -> bytes:
        if self.error is not None:
            raise self.error
        assert self.body is not None
        return self.body

    def finish(self) -> None:
        self.done.set()
        if self.on_done is not None:
            self.on_done()


# Stores a batch in one transaction: sets each submit's body, or a SylphxError it refused
# with (raised before that submit wrote anything); raises when the transaction failed.
StoreBatch = Callable[[list[Submit]], None]
# Stores one submit in its own transaction: its body (or it raises).
StoreOne = Callable[[Submit], bytes]


class GroupCommit:
    """The queue of submits and the committer that stores them (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: list[tuple[Submit, StoreBatch, StoreOne]] = []
        self._leading = False  # a batch is being stored (then the queue waits for it)
        self._thread: threading.Thread | None = None

    def submit(self, ask: Submit, batch: StoreBatch, alone: StoreOne) -> bytes:
        """Queue ``ask`` and wait for its answer (blocking this thread)."""
        self._put(ask, batch, alone)
        ask.done.wait()
        return ask.answer()

    async def wait(self, ask: Submit, batch: StoreBatch, alone: StoreOne) -> bytes:
        """Queue ``ask`` and await its answer (no thread waits for it)."""
        loop = asyncio.get_running_loop()
        answered = loop.create_future()

        def resolve() -> None:
            if not answered.done():  # the request may have gone (its task cancelled)
                answered.set_result(None)

        def wake() -> None:  # in the committer's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody awaits it
                loop.call_soon_threadsafe(resolve)

        ask.on_done = wake
        self._put(ask, batch, alone)
        await answered
        return ask.answer()

    def _put(self, ask: Submit, batch: StoreBatch, alone: StoreOne) -> None:
        with self._lock:
            self._queue.append((ask, batch, alone))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._commit, name="sylphx-submits", daemon=True
                )
                self._thread.start()
            self._ready.notify()

    def _commit(self) -> None:
        """The committer: the queued submits, a batch (one transaction) at a time."""
        while True:
            with self._lock:
                while not self._queue:
                    self._ready.wait()
                taken, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                self._leading = True
            asks = [ask for ask, _, _ in taken]
            try:  # (the batch's submits all store through the same parts: the first's)
                _store(asks, taken[0][1], taken[0][2])
            except BaseException as exc:  # the committer goes on; every waiter is answered
                for ask in asks:
                    if ask.body is None and ask.error is None:
                        ask.error = exc
            finally:
                with self._lock:  # decided before the answers: a caller sees it settled
                    self._leading = bool(self._queue)
                for ask in asks:
                    ask.finish()


def _store(asks: list[Submit], batch: StoreBatch, alone: StoreOne) -> None:
    """Store ``asks`` in one transaction; when that fails, each in its own."""
    for ask in asks:
        ask.body = ask.error = None
    try:
        batch(asks)
        return
    except BaseException as exc:  # every waiter must get an answer
        if len(asks) == 1 or not isinstance(exc, Exception):
            for ask in asks:
                ask.body, ask.error = None, exc
            return
    for ask in asks:  # the batch was rolled back: nothing of it was stored
        try:
            ask.body, ask.error = alone(ask), None
        except Exception as exc:  # its answer
            ask.body, ask.error = None, exc
