"""The stub executor: the executor interface in memory, for tests (as dramatiq's StubBroker).

It starts no process. An attempt is a record that runs from the :meth:`~StubExecutor.flush`
after its launch until the caller ends it (:meth:`~StubExecutor.finish`,
:meth:`~StubExecutor.lose`) or a signal does; its start and exit are stamped by an injected
clock. With ``reports_starts`` it is handed over at the flush but starts only when the caller
says (:meth:`~StubExecutor.start`), as a Ray task waits to be placed.

With a :class:`ManualClock` shared with the reconciler, a test drives passes one at a time
and checks deadlines, grace periods and the billing meter to the second::

    clock = ManualClock()
    executor = StubExecutor(Resources.of_host(4, 16 << 30), clock=clock)
    rec = Reconciler(sessions, executor, settings, clock=clock)
    ...submit a run...
    rec.tick()                      # the pass records the attempts, commits, flushes
    clock.advance(600)
    executor.finish(0)              # shard 0 exits 0, ten minutes after it started
    rec.tick()                      # ...and this pass settles it

It keeps the interface's contract where a test could tell: launches start only at the next
flush (a discarded flush or :meth:`~StubExecutor.drop` starts nothing); a launch is
idempotent per (run, index, attempt); every exit is polled once; the waker is called when
an attempt ends. It is thread-safe, so a reconciler loop may run it on its own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sylphx._core.machines import Resources

from .base import Exit, LaunchRequest, Signal, Waker

if TYPE_CHECKING:
    from .base import Executor

__all__ = ["ManualClock", "StubAttempt", "StubExecutor"]

Clock = Callable[[], datetime]

SIGNAL_CODES: dict[Signal, int] = {"term": -15, "kill": -9}
"""The return code of an attempt a signal ended (as ``subprocess`` reports it)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told: ``clock()`` is the current time, ``advance``
    moves it. Give one to the stub and the reconciler so both read the same time."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        """Start at ``start`` (an aware datetime)."""
        self.now = start

    def __call__(self) -> datetime:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move the clock ``seconds`` forward; the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class StubAttempt:
    """One attempt the stub knows: what launched it, and when it started and ended."""

    handle: str
    request: LaunchRequest
    flushed: bool = False  # handed over to be started (a flush after its launch)
    started_at: datetime | None = None  # its process started (at the flush, or start())
    exit: Exit | None = None  # set when it ended
    signals: list[Signal] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """Handed over and not ended (it may still wait to start)."""
        return self.flushed and self.exit is None


class StubExecutor:
    """An :class:`~sylphx._server.executors.base.Executor` whose attempts live in memory.

    What a test reads: :attr:`live` (the attempts handed over and not ended, by handle),
    :attr:`signals` (every signal sent, in order), :attr:`reservations` (the gangs asked
    for), :attr:`forgotten` (the runs forgotten), :meth:`attempt` (one attempt's record).
    What it sets: :attr:`resources` (the capacity reported, which may change between
    passes, as a Ray cluster's does), :attr:`ignore_term` (SIGTERM is then recorded but
    ends nothing, as a shard that traps it), :attr:`gangs_ready` (False: gang reservations
    wait, as a pending Ray placement group). What it does: :meth:`finish`,
    :meth:`finish_all`, :meth:`lose`, and with ``reports_starts`` :meth:`start`.
    """

    name = "stub"

    def __init__(
        self,
        resources: Resources | None = None,
        *,
        clock: Clock = _utc_now,
        reports_starts: bool = False,
        batches_exits: bool = False,
    ) -> None:
        """``resources``: the capacity reported (default 64 vCPU / 256 GiB); ``clock``:
        what stamps starts and exits (default: the wall clock, in UTC);
        ``reports_starts``: attempts start when :meth:`start` says, not at the flush;
        ``batches_exits``: a pass its waker asks for waits no exit batch period (as
        Ray's), only the previous pass's CPU time."""
        self.resources = resources or Resources.of_host(64, 256 << 30)
        self.clock = clock
        self.reports_starts = reports_starts
        self.batches_exits = batches_exits
        self.ignore_term = False
        self.gangs_ready = True
        self.signals: list[tuple[str, Signal]] = []
        self.reservations: list[tuple[str, int, str]] = []
        self.forgotten: list[str] = []
        self.closed = False
        self.waker: Waker | None = None
        self._attempts: dict[str, StubAttempt] = {}
        self._prepared: list[str] = []  # launched, waiting for the next flush
        self._unpolled: list[Exit] = []
        self._unreported: list[tuple[str, datetime]] = []  # starts not yet asked for
        self._lock = threading.RLock()

    # -- the executor interface -----------------------------------------------------------
    def capacity(self) -> Resources:
        """The capacity the test gave (:attr:`resources`)."""
        return self.resources

    def launch(self, request: LaunchRequest) -> str:
        """Prepare the attempt (it starts at the next flush) and return its handle; an
        attempt launched before keeps its handle (and is not prepared again)."""
        handle = self.handle_of(request.run_id, request.index, request.attempt)
        with self._lock:
            if handle not in self._attempts:
                self._attempts[handle] = StubAttempt(handle, request)
                self._prepared.append(handle)
        return handle

    def check_images(self) -> None:
        """Accept image runs: the stub runs nothing, so any image will do."""

    def flush(self, *, discard: bool = False) -> None:
        """Hand the prepared attempts over (they start now, at the clock's time, unless
        :attr:`reports_starts`), or forget them."""
        with self._lock:
            prepared, self._prepared = self._prepared, []
            now = self.clock()
            for handle in prepared:
                if discard:
                    del self._attempts[handle]
                    continue
                attempt = self._attempts[handle]
                attempt.flushed = True
                if not self.reports_starts:
                    attempt.started_at = now

    def drop(self, handles: Collection[str]) -> None:
        """Forget prepared attempts among ``handles`` (started ones are kept)."""
        with self._lock:
            for handle in handles:
                if handle in self._prepared:
                    self._prepared.remove(handle)
                    del self._attempts[handle]

    def adopt(self, handle: str) -> bool:
        """Whether this stub knows the attempt (a new stub knows none: all are lost)."""
        with self._lock:
            return handle in self._attempts

    def started(self, handle: str) -> bool:
        """Whether the attempt was handed over by a flush (it may have ended since)."""
        with self._lock:
            attempt = self._attempts.get(handle)
            return attempt is not None and attempt.flushed

    def poll(self) -> list[Exit]:
        """The exits since the last poll, in the order the attempts ended."""
        with self._lock:
            exits, self._unpolled = self._unpolled, []
        return exits

    def starts(self) -> list[tuple[str, datetime]]:
        """The attempts :meth:`start` started since the last call, with when."""
        with self._lock:
            started, self._unreported = self._unreported, []
        return started

    def signal(self, handle: str, sig: Signal) -> None:
        """Record the signal; it ends a running attempt unless it is a SIGTERM while
        :attr:`ignore_term` is set."""
        with self._lock:
            self.signals.append((handle, sig))
            attempt = self._attempts.get(handle)
            if attempt is not None:
                attempt.signals.append(sig)
            ended = (sig == "kill" or not self.ignore_term) and self._end(handle, SIGNAL_CODES[sig])
        if ended:
            self._wake()

    def alive(self, handle: str) -> bool:
        """Whether the attempt was handed over and has not ended."""
        with self._lock:
            return handle in self.live

    def set_waker(self, wake: Waker) -> None:
        """Keep ``wake``: called whenever an attempt ends."""
        self.waker = wake

    def reserve_gang(self, run_id: str, n: int, machine: str) -> bool:
        """Record the request; :attr:`gangs_ready` is the answer."""
        with self._lock:
            self.reservations.append((run_id, n, machine))
        return self.gangs_ready

    def forget_run(self, run_id: str) -> None:
        """Drop every attempt of the run (each has ended and been settled)."""
        with self._lock:
            self.forgotten.append(run_id)
            for handle, attempt in list(self._attempts.items()):
                if attempt.request.run_id == run_id:
                    del self._attempts[handle]
            self._prepared = [h for h in self._prepared if h in self._attempts]

    def close(self) -> None:
        """Mark the stub closed; its attempts are left as they are."""
        self.closed = True

    # -- what a test does and reads --------------------------------------------------------
    @staticmethod
    def handle_of(run_id: str, index: int, attempt: int) -> str:
        """The handle of an attempt (the same for every launch of it)."""
        return f"stub:{run_id}:{index}:{attempt}"

    @property
    def live(self) -> dict[str, LaunchRequest]:
        """The attempts handed over and not ended: handle -> what launched it."""
        with self._lock:
            return {h: a.request for h, a in self._attempts.items() if a.running}

    def attempt(self, handle: str) -> StubAttempt:
        """What the stub knows of one attempt (KeyError if nothing)."""
        with self._lock:
            return self._attempts[handle]

    def start(self, index: int | None = None, *, run_id: str | None = None) -> list[str]:
        """With :attr:`reports_starts`: start the waiting attempts of shard ``index`` (of
        any shard if None; of ``run_id``, or of any run) now; their handles."""
        with self._lock:
            now = self.clock()
            begun = [
                a.handle
                for a in self._matching(index, run_id)
                if a.started_at is None and self.reports_starts
            ]
            for handle in begun:
                self._attempts[handle].started_at = now
                self._unreported.append((handle, now))
        return begun

    def started_late(self, index: int, seconds: float) -> list[str]:
        """Without :attr:`reports_starts`: the running attempts of shard ``index`` really
        started ``seconds`` after their flush (as a busy host's supervisor spawns them),
        reported by :meth:`starts`; their handles."""
        late = []
        with self._lock:
            for a in self._matching(index, None):
                if a.started_at is not None:
                    a.started_at += timedelta(seconds=seconds)
                    self._unreported.append((a.handle, a.started_at))
                    late.append(a.handle)
        return late

    def finish(self, index: int, code: int = 0, *, run_id: str | None = None) -> list[str]:
        """End the running attempts of shard ``index`` (of ``run_id``, or of any run) with
        return code ``code``; their handles."""
        return self._end_where(index, run_id, code)

    def finish_all(self, code: int = 0) -> list[str]:
        """End every running attempt with return code ``code``; their handles."""
        return self._end_where(None, None, code)

    def lose(self, index: int, *, run_id: str | None = None) -> list[str]:
        """Report the running attempts of shard ``index`` lost (as a Ray node that died:
        a preemption, not a failure); their handles."""
        return self._end_where(index, run_id, SIGNAL_CODES["kill"], lost=True)

    # -- inside ---------------------------------------------------------------------------
    def _matching(self, index: int | None, run_id: str | None) -> list[StubAttempt]:
        """The attempts handed over and not ended, of shard ``index`` and run ``run_id``
        (None: any)."""
        return [
            a
            for a in self._attempts.values()
            if a.running
            and (index is None or a.request.index == index)
            and (run_id is None or a.request.run_id == run_id)
        ]

    def _end_where(
        self, index: int | None, run_id: str | None, code: int, *, lost: bool = False
    ) -> list[str]:
        with self._lock:
            ended = [a.handle for a in self._matching(index, run_id)]
            for handle in ended:
                self._end(handle, code, lost=lost)
        if ended:
            self._wake()
        return ended

    def _end(self, handle: str, code: int, *, lost: bool = False) -> bool:
        """End the attempt if it is running (its exit is polled next); whether it was."""
        attempt = self._attempts.get(handle)
        if attempt is None or not attempt.running:
            return False
        attempt.exit = Exit(handle, code, self.clock(), lost=lost, started_at=attempt.started_at)
        self._unpolled.append(attempt.exit)
        return True

    def _wake(self) -> None:
        if self.waker is not None:
            self.waker()


if TYPE_CHECKING:
    _conforms: type[Executor] = StubExecutor  # mypy checks the stub against the protocol
