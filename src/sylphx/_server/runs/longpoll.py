"""Long-polls: ``GET /v1/runs/{id}?wait=SECONDS`` answers once the run is terminal, or after
``wait`` seconds with the view it has then (never an error for "still running").

A waiting request is an :class:`asyncio.Event` on the event loop: it holds no thread while
it waits, only its connection. It is released by

* the reconciler of this process: after each committed pass it hands the ids of the runs
  that pass ended to :meth:`RunWaiters.passed` (on its own thread), which hands them to the
  loop with ``call_soon_threadsafe``;
* a cancel this process settled at once (a queued run), through :meth:`RunWaiters.ended`;
* a fallback check, one query for the states of every run waited on in this process:
  every ``recheck`` seconds (0.5) while this process is not the one reconciling (with
  ``--workers N`` only the lease holder reconciles, see :mod:`.lease`), and every
  ``safety`` seconds (2) while it is, for runs ended elsewhere (a queued run cancelled
  through another worker);
* the client going away (the waiter is dropped), or the server shutting down (every waiter
  answers with the current view).

A released request reads its run again the usual way (shared reads, cached final views).
It also reads it once right after registering, so a run that ended between the first read
and the registration is not missed. At most ``max_waiters`` requests wait in one process;
beyond that a request is answered at once with the current view, as without ``wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine, bindparam, select
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from sylphx._core.errors import ValidationError
from sylphx._core.limits import MAX_WAIT
from sylphx._core.states import RUN_TERMINAL
from sylphx._server.store import RunRow

__all__ = ["MAX_WAIT", "RunWaiters", "ended_among", "is_terminal", "wait_error"]

log = logging.getLogger("sylphx.longpoll")
MAX_WAITERS = 1024  # per API process
RECHECK_SECONDS = 0.5  # fallback check while another process reconciles
SAFETY_SECONDS = 2.0  # fallback check while this process reconciles (notified otherwise)
CHUNK = 500  # run ids per IN (...) list (old SQLite builds allow 999 variables)

Read = Callable[[], Awaitable[bytes]]
_TERMINAL = frozenset(state.value for state in RUN_TERMINAL)
_ENDED = select(RunRow.__table__.c.id).where(
    RunRow.__table__.c.id.in_(bindparam("ids", expanding=True)),
    RunRow.__table__.c.state.in_(sorted(_TERMINAL)),
)


def is_terminal(body: bytes) -> bool:
    """Whether a RunView's JSON shows a terminal status."""
    status = json.loads(body).get("status")
    return status in _TERMINAL


def ended_among(engine: Engine, run_ids: list[str]) -> set[str]:
    """Those of ``run_ids`` whose runs are terminal in the store (a few indexed reads)."""
    out: set[str] = set()
    with engine.connect() as conn:
        for i in range(0, len(run_ids), CHUNK):
            out.update(conn.scalars(_ENDED, {"ids": run_ids[i : i + CHUNK]}))
    return out


def wait_error(errors: list[Any]) -> ValidationError | None:
    """The 422 for a ``wait`` query parameter FastAPI could not accept, if that is what
    ``errors`` (FastAPI's request validation errors) are about."""
    for err in errors:
        if tuple(err.get("loc", ())) == ("query", "wait"):
            got = err.get("input")
            rule = f"must be a number of seconds, 0 < wait <= {MAX_WAIT:g} (got {got!r})"
            fix = f"give e.g. wait=30; to wait longer than {MAX_WAIT:g}s, repeat the request"
            return ValidationError(
                f"wait: {rule}. Fix: {fix}.",
                details=[{"field": "wait", "rule": rule, "fix": fix}],
            )
    return None


class _Waiter:
    __slots__ = ("event", "gone")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.gone = False  # the client disconnected


class RunWaiters:
    """The long-polls of one API process, by run id. Everything but :meth:`passed` and
    :meth:`ended` runs on the event loop."""

    def __init__(
        self,
        check: Callable[[list[str]], set[str]],
        *,
        reconcile_interval: float = 0.5,
        max_waiters: int = MAX_WAITERS,
        recheck: float = RECHECK_SECONDS,
        safety: float = SAFETY_SECONDS,
    ) -> None:
        """``check(run_ids)``: which of them are terminal in the store (blocking; it runs
        in the thread pool)."""
        self.max_waiters = max_waiters
        self.recheck = recheck
        self.safety = safety
        self._check = check
        # this process reconciles while its passes commit at least this often
        self._heartbeat = 2.0 + 2 * reconcile_interval
        self._last_pass = float("-inf")  # monotonic time of this process's last pass
        self._waiting: dict[str, set[_Waiter]] = {}
        self._count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checker: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        """Requests waiting now."""
        return self._count

    @property
    def reconciling(self) -> bool:
        """Whether this process's reconciler committed a pass lately (holds the lease)."""
        return time.monotonic() - self._last_pass < self._heartbeat

    # -- any thread ---------------------------------------------------------
    def passed(self, ended: list[str]) -> None:
        """The reconciler's hook: a pass committed and ended ``ended`` (reconciler thread)."""
        self._last_pass = time.monotonic()
        if ended and self._waiting:
            self.ended(ended)

    def ended(self, run_ids: list[str]) -> None:
        """These runs are terminal now (committed): release their waiters."""
        self._post(self._release, run_ids)

    def close(self) -> None:
        """Shutting down: every waiter answers now, and later requests do not wait."""
        self._closed = True
        self._post(self._release_all, [])

    def _post(self, fn: Callable[[list[str]], None], run_ids: list[str]) -> None:
        loop = self._loop
        if loop is not None:  # else nobody ever waited in this process
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(fn, run_ids)

    # -- event loop ---------------------------------------------------------
    async def wait(
        self, run_id: str, seconds: float, read: Read, receive: Receive | None = None
    ) -> bytes:
        """The run's JSON as ``read()`` gives it, once it is terminal or after ``seconds``.
        ``read`` raises NotFound for a run the caller may not see (before any waiting);
        ``receive`` is the request's ASGI receive, watched for the client going away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        body = await read()
        if is_terminal(body) or self._closed or self._count >= self.max_waiters:
            return body
        self._loop = loop
        waiter = _Waiter()
        self._add(run_id, waiter)
        watch = asyncio.create_task(_watch(receive, waiter)) if receive is not None else None
        try:
            body = await read()  # registered first: an end committed since is seen now
            while not is_terminal(body) and not self._closed:
                try:
                    await asyncio.wait_for(waiter.event.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    return await read()  # the view as it is at the deadline
                if waiter.gone:
                    return body  # nobody left to answer
                waiter.event.clear()
                body = await read()
            return body
        finally:
            if watch is not None:
                watch.cancel()
            self._remove(run_id, waiter)

    def _add(self, run_id: str, waiter: _Waiter) -> None:
        self._waiting.setdefault(run_id, set()).add(waiter)
        self._count += 1
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_loop())

    def _remove(self, run_id: str, waiter: _Waiter) -> None:
        waiters = self._waiting.get(run_id)
        if waiters is not None and waiter in waiters:
            waiters.discard(waiter)
            self._count -= 1
            if not waiters:
                del self._waiting[run_id]

    def _release_all(self, _: list[str]) -> None:
        self._release(list(self._waiting))
        if self._checker is not None:
            self._checker.cancel()

    def _release(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            for waiter in self._waiting.get(run_id, ()):
                waiter.event.set()

    async def _check_loop(self) -> None:
        """The fallback: while anyone waits, ask the store which waited runs ended."""
        failing = False
        while self._waiting:
            await asyncio.sleep(self.safety if self.reconciling else self.recheck)
            run_ids = list(self._waiting)
            if not run_ids:
                break
            try:
                ended = await run_in_threadpool(self._check, run_ids)
            except Exception as exc:  # the store is away: waiters still time out
                if not failing:
                    log.warning("long-poll check failed (retrying): %s", exc)
                failing = True
                continue
            failing = False
            self._release(list(ended))


async def _watch(receive: Receive, waiter: _Waiter) -> None:
    """Wake ``waiter`` when its client disconnects (a GET's body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    waiter.gone = True
    waiter.event.set()
