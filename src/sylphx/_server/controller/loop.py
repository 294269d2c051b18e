"""The loop that runs reconcile passes: when a pass runs, and who may run one.

A pass runs at once after :meth:`PassLoop.wake` (a submit, a cancel; paced under a stream
of them, see below), soon after an executor reports ended processes (batched, see
``EXIT_BATCH_SECONDS``), and every ``reconcile_interval`` anyway. With several API
processes on one store only the holder of the lease reconciles; one that takes the lease
over re-adopts every live attempt first. A pass that fails is logged and the next one
re-reads everything.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import StorageFull
from sylphx._server.infra import faults
from sylphx._server.infra.lease import Lease
from sylphx._settings import Settings

from . import telemetry

log = logging.getLogger("sylphx.reconciler")
# A pass woken by process exits starts at least this long after the previous pass began,
# so exits that trickle in (256 shards ending over a few seconds) are settled a batch per
# pass, not one pass each; like the Kubernetes Job controller's sync batch period. An
# exit after a quiet spell, and every wake() (submit, cancel), still start a pass at once;
# so does one after a pass that settled EXIT_BATCH exits or more (a burst: the next
# exits are likely as many, and waiting would only delay them).
EXIT_BATCH_SECONDS = 0.04
EXIT_BATCH = 32
# An executor that gathers its exits itself (Ray: one feed read a round trip) wakes a pass
# without the period above; so that a steady stream of such wake-ups cannot keep the
# reconciler busy (every tenant's API calls share its process), a pass it woke starts no
# sooner after the previous one ended than that one's own CPU time: at most half a core.
# And a pass a wake() asked for (a submit, a cancel) starts no sooner after the previous
# one ended than that one lasted, and never more than WAKE_REST_SECONDS later: at once
# after a quiet spell, but under a stream of submits, where every commit of the submit
# batch woke a pass of its own and passes ran back to back (holding SQLite's one write
# lock, which each submit's commit needs too), the runs of the next commit or two are
# admitted in the same pass. The cap keeps passes short (a submit that arrives as one
# begins waits for all of it: P7's p99 submit latency) and a cancel as prompt as before;
# a pass that failed (a store away for 30 s, say) paces nothing. P7 (bench, twenty-third
# session): +5-29% runs/s; a rest of up to the whole pass length gave +20-50% but a p99
# submit latency of 100-130 ms plain and 2.2 s sandboxed.
WAKE_REST_SECONDS = 0.025


class PassLoop(ABC):
    """Runs :meth:`tick` in a thread, as often as described above; :meth:`recover`
    before the first pass and after any pass that failed."""

    sessions: sessionmaker[Session]
    settings: Settings
    lease: Lease | None

    def __init__(self) -> None:
        self._wake = threading.Event()  # set by every wake-up, batched ones included
        self._urgent = threading.Event()  # set by wake(): no batching
        self._stop = threading.Event()
        self._last_start = float("-inf")  # monotonic time the last pass began
        self._last_exits = 0  # exits the last pass settled
        self._paced = threading.Event()  # set by _wake_paced (see above)
        self._last_end = float("-inf")  # monotonic time the last pass ended
        self._last_length = 0.0  # how long its tick took (0: it failed)
        self._last_cpu = 0.0  # the CPU seconds it took
        self._thread: threading.Thread | None = None
        self._recovered = False  # whether start() already re-adopted live attempts

    @abstractmethod
    def tick(self) -> None:
        """One pass."""

    @abstractmethod
    def recover(self) -> None:
        """Re-adopt the live attempts (after a start, a take-over or a failed pass)."""

    def wake(self) -> None:
        """Run the next pass now (after a submit or a cancel), or, if the previous pass
        ended less than its own length ago, once that long has passed (see above)."""
        self._urgent.set()
        self._wake.set()

    def _wake_batched(self) -> None:
        """Run a pass soon: processes ended (see EXIT_BATCH_SECONDS)."""
        self._wake.set()

    def _wake_paced(self) -> None:
        """Run a pass soon: the executor reports exits it gathered itself (see above)."""
        self._paced.set()
        self._wake.set()

    def _wait(self) -> None:
        """Until the next pass is due: a wake-up, or the reconcile interval."""
        self._wake.wait(self.settings.reconcile_interval)
        if not self._urgent.is_set():
            if self._paced.is_set():  # gathered already: paced by the pass's own cost
                rest = self._last_end + self._last_cpu - time.monotonic()
            elif self._last_exits < EXIT_BATCH:  # let exits gather
                rest = self._last_start + EXIT_BATCH_SECONDS - time.monotonic()
            else:
                return
            if rest > 0:
                self._urgent.wait(rest)
            if not self._urgent.is_set():
                return
        # a submit or a cancel: the previous pass's length after its end (see wake)
        pace = min(self._last_length, WAKE_REST_SECONDS)
        rest = self._last_end + pace - time.monotonic()
        if rest > 0:
            self._stop.wait(rest)

    def start(self) -> None:
        if self.lease is None or self.lease.ensure():
            self.recover()
            self._recovered = True
        self._thread = threading.Thread(target=self._loop, name="sylphx-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lease is not None:
            self.lease.release()

    def _loop(self) -> None:
        readopt = not self._recovered
        while not self._stop.is_set():
            self._wake.clear()
            self._urgent.clear()
            self._paced.clear()
            self._last_start, cpu = time.monotonic(), time.thread_time()
            length = 0.0  # a pass that failed paces nothing (see _wait)
            try:
                # Several API processes may share the store: only the lease holder acts.
                # A standby that takes over re-adopts every live attempt first.
                if self.lease is not None and not self.lease.ensure():
                    readopt = True
                    self._wake.wait(self.settings.reconcile_interval)
                    continue
                if readopt:  # exits polled by a failed pass were lost with its transaction
                    self.recover()
                    readopt = False
                with telemetry.timed_pass():  # its duration; a failure is counted too
                    began = time.monotonic()
                    self.tick()
                    length = time.monotonic() - began
            except (OperationalError, InterfaceError) as exc:  # the store is away: say so
                bind = self.sessions.kw["bind"]
                assert isinstance(bind, Engine)
                log.error("reconcile pass failed: %s", faults.store_unavailable(exc, bind).message)
                readopt = True
            except StorageFull as exc:
                log.error("reconcile pass failed: %s", exc.message)
                readopt = True
            except Exception:  # keep reconciling; the next pass re-reads everything
                log.exception("reconcile pass failed")
                readopt = True
            self._last_end, self._last_cpu = time.monotonic(), time.thread_time() - cpu
            self._last_length = length
            self._wait()
