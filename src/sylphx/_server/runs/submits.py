"""Group commit of submits: the submits that arrive together are stored in one transaction.

A submit is one short write transaction (the org's row locked, its budget checked, the run
and its shards inserted). On SQLite only one writer runs at a time, so under concurrent
submits each waited for the write lock, and the commit, on its own. Here the submits that
arrive while a transaction is under way queue; when it ends, the first of them leads: it
stores every queued submit (up to ``MAX_BATCH``) in one transaction, commits, and only
then answers each -- so every 201 still follows its run's durable commit. The leader
hands over to the first submit that queued meanwhile; no thread of its own, and no wait
for company: a lone submit leads a batch of one at once.

Inside a batch each submit is checked as if it were alone and after the ones before it:
the org's row is locked once (FOR UPDATE on PostgreSQL; SQLite's write lock), its
shards in use counted once and then kept up to date as the batch reserves them, so the
concurrent-shard budget never overshoots. A refusal (429, 402, 404, 409) raises before
that submit writes anything, so it is answered alone and the batch goes on. Any other
failure rolls the whole batch back, and each of its submits is then stored alone in its
own transaction (where the one that fails, fails alone).
"""

from __future__ import annotations

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
    lead: bool = False  # woken to lead the next batch, not with an answer
    done: threading.Event = field(default_factory=threading.Event)

    def answer(self) -> bytes:
        if self.error is not None:
            raise self.error
        assert self.body is not None
        return self.body


# Stores a batch in one transaction: sets each submit's body, or a SylphxError it refused
# with (raised before that submit wrote anything); raises when the transaction failed.
StoreBatch = Callable[[list[Submit]], None]
# Stores one submit in its own transaction: its body (or it raises).
StoreOne = Callable[[Submit], bytes]


class GroupCommit:
    """The queue of submits and who leads the next batch (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Submit] = []
        self._leading = False  # a batch is being stored (then the queue waits for it)

    def submit(self, ask: Submit, batch: StoreBatch, alone: StoreOne) -> bytes:
        """Queue ``ask`` and wait for its answer; lead a batch when its turn comes."""
        with self._lock:
            self._queue.append(ask)
            leads = not self._leading
            self._leading = True
        if not leads:
            ask.done.wait()
            if not ask.lead:
                return ask.answer()
        with self._lock:  # ask is first in the queue: the leader took everything before it
            asks, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        try:
            _store(asks, batch, alone)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].done.set()
                else:
                    self._leading = False
            for other in asks:
                if other is not ask:
                    other.done.set()
        return ask.answer()


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
