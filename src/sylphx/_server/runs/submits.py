"""Group commit of submits: the submits that arrive together are stored in one transaction.

A submit is one short write transaction (the org's row locked, its budget checked, the run
and its shards inserted). On SQLite only one writer runs at a time, so under concurrent
submits each waited for the write lock, and the commit, on its own. Here the submits that
arrive while a transaction is under way queue; when it ends, the committer (one thread of
its own, started with the first submit, and again by any submit that finds it gone)
stores every queued submit (up to ``MAX_BATCH``) in one transaction, commits, and only
then answers each -- so every 201 still follows its run's durable commit; a batch that
failed answers no submit with a body it rendered before its rollback. No wait for
company: a lone submit is stored in a batch of one at once. The API's submits wait for
their answer without a thread (:meth:`GroupCommit.wait`: the committer resolves their
future). When the plane stops, :meth:`GroupCommit.close` answers what is queued and then
refuses new submits (503) before the store goes.

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

from sylphx._core.errors import ServerUnavailable
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
    digests: dict[str, str] | None = None  # each image reference's admitted digest
    # its run's id, chosen before any transaction: a batch whose COMMIT went through but
    # raised (the acknowledgement lost) is stored again one by one, and each then finds
    # its run instead of storing a second one
    run_id: str = field(default_factory=lambda: new_id("wrk"))
    body: bytes | None = None
    error: BaseException | None = None
    settled: bool = False  # its answer is final (its transaction, or refusal, is over)
    # called (in the committer) once it is answered: wakes its waiter
    on_done: Callable[[], None] | None = None

    def answer(self) -> bytes:
        if self.error is not None:
            raise self.error
        assert self.body is not None
        return self.body

    def finish(self) -> None:
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
        self._thread: threading.Thread | None = None
        self._closed = False  # the plane stops: no new submit is queued

    def submit(self, ask: Submit, batch: StoreBatch, alone: StoreOne) -> bytes:
        """Queue ``ask`` and wait for its answer (blocking this thread)."""
        answered = threading.Event()
        ask.on_done = answered.set
        self._put(ask, batch, alone)
        answered.wait()
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
        """Queue ``ask`` for the committer, started (again) if it is not running: a start
        that fails (no thread to be had) refuses this submit and leaves no trace, so the
        next one tries again instead of waiting for a committer that never came."""
        with self._lock:
            if self._closed:
                raise ServerUnavailable(
                    "the control plane is shutting down and accepts no new runs. Fix: retry"
                    " in a few seconds, once it has restarted."
                )
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._commit, name="sylphx-submits", daemon=True)
                thread.start()  # raises before anything is queued
                self._thread = thread
            self._queue.append((ask, batch, alone))
            self._ready.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new submits, let the committer store and answer the queued ones, and
        wait (up to ``timeout`` seconds) for it to end: before the plane lets its store go."""
        with self._lock:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _commit(self) -> None:
        """The committer: the queued submits, a batch (one transaction) at a time."""
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:  # closed, and every queued submit answered
                    return
                taken, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            asks = [ask for ask, _, _ in taken]
            try:  # (the batch's submits all store through the same parts: the first's)
                _store(asks, taken[0][1], taken[0][2])
            except BaseException as exc:  # the committer goes on; every waiter is answered
                for ask in asks:
                    if not ask.settled:  # a body of a rolled-back batch is no answer
                        ask.body, ask.error = None, exc
            for ask in asks:
                ask.finish()
            del taken, asks  # the last batch's parts (sessions, specs) not kept alive


def _store(asks: list[Submit], batch: StoreBatch, alone: StoreOne) -> None:
    """Store ``asks`` in one transaction; when that fails, each in its own."""
    for ask in asks:
        ask.body, ask.error, ask.settled = None, None, False
    try:
        batch(asks)
    except BaseException as exc:  # every waiter must get an answer
        for ask in asks:  # the batch was rolled back: no body of it is an answer
            ask.body, ask.error = None, exc
        if len(asks) == 1 or not isinstance(exc, Exception):
            for ask in asks:
                ask.settled = True
            return
    else:
        for ask in asks:
            ask.settled = True
        return
    for ask in asks:  # each in its own transaction now
        try:
            ask.body, ask.error = alone(ask), None
        except Exception as exc:  # its answer
            ask.body, ask.error = None, exc
        ask.settled = True
