"""The web dashboard's long-poll: ``GET /ui/runs/{id}/live?version=V&wait=S`` answers as
soon as the run's live version (:func:`.grid.versions`: any write of its row, a shard's
or the merge step's changes it) differs from ``V`` -- at once if it already does -- or
after ``S`` seconds (the page asks for 25) with "no change".

A waiting request is an :class:`asyncio.Event` on the event loop: it holds no thread while
it waits, only its connection. While anyone waits, one check per process reads the live
versions of every run waited on (two grouped, indexed queries for all of them, in the
thread pool) every ``recheck`` seconds and wakes the waiters whose run changed. Half a
second is the reconciler's default interval: its passes commit no more often unless an
exit wakes them. Polling the store (rather than a hook in this process's reconciler, as
:mod:`.longpoll` is woken) sees the changes of every writer: another ``--workers``
process's reconciler, a cancel or retry through another process. Its cost does not grow
with the number of waiters.

A wait ends early when its client goes away, and every wait ends (with "no change") once
the process drains (SIGTERM): none holds the exit. At most ``per_org`` requests of one
org and ``total`` in the process wait at once; beyond that, and while draining, a request
is refused (429 ``quota_exceeded``, 503) and the page backs off before asking again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from sylphx._core.errors import QuotaExceeded, ServerUnavailable

__all__ = ["MAX_LIVE", "MAX_LIVE_PER_ORG", "MAX_LIVE_WAIT", "LiveWaiters"]

log = logging.getLogger("sylphx.live")
MAX_LIVE = 1024  # waiting dashboard updates per API process
MAX_LIVE_PER_ORG = 64  # ... of one org (one per open run page)
MAX_LIVE_WAIT = 25.0  # seconds: what the page asks for, under common proxies' idle cut
RECHECK_SECONDS = 0.5
RETRY_AFTER_SECONDS = 5


class _Waiter:
    __slots__ = ("event", "now", "seen")

    def __init__(self, seen: str) -> None:
        self.event = asyncio.Event()
        self.seen = seen  # the version the page has
        self.now = seen  # the version the check found, once it differs


class LiveWaiters:
    """The dashboard's waiting live updates in one API process, by run id. Everything
    runs on the event loop; ``versions`` and ``draining`` are the plane's."""

    def __init__(
        self,
        versions: Callable[[list[str]], dict[str, str]],
        *,
        draining: Callable[[], bool],
        per_org: int = MAX_LIVE_PER_ORG,
        total: int = MAX_LIVE,
        recheck: float = RECHECK_SECONDS,
    ) -> None:
        """``versions(run_ids)``: their live versions now, a deleted run missing
        (blocking: it runs in the thread pool)."""
        self.per_org = per_org
        self.total = total
        self.recheck = recheck
        self._versions = versions
        self._draining = draining
        self._waiting: dict[str, set[_Waiter]] = {}
        self._orgs: Counter[str] = Counter()
        self._count = 0
        self._checker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Requests waiting now."""
        return self._count

    async def wait(
        self, run_id: str, org_id: str, seen: str, seconds: float, receive: Receive | None = None
    ) -> str:
        """The run's live version once it differs from ``seen``, or ``seen`` after
        ``seconds`` (or when the client goes away: ``receive`` is the request's ASGI
        receive, or the process drains). The caller has checked that the org may see
        the run and that ``seen`` was current a moment ago: a change since is found by
        the first check. QuotaExceeded past the bounds, ServerUnavailable while
        draining, both before any waiting."""
        self._take(org_id)
        waiter = _Waiter(seen)
        self._waiting.setdefault(run_id, set()).add(waiter)
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_loop())
        watch = asyncio.create_task(_watch(receive, waiter)) if receive is not None else None
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), seconds)
            return waiter.now
        finally:
            if watch is not None:
                watch.cancel()
            self._remove(run_id, org_id, waiter)

    def _take(self, org_id: str) -> None:
        if self._draining():
            raise ServerUnavailable(
                "the control plane is shutting down. Fix: the page retries by itself."
            )
        if self._count >= self.total or self._orgs[org_id] >= self.per_org:
            who = "this API process" if self._count >= self.total else "your org"
            most = self.total if self._count >= self.total else self.per_org
            fix = "close some dashboard tabs; the pages retry by themselves"
            raise QuotaExceeded(
                f"{who} has {most} live dashboard updates waiting, its most. Fix: {fix}.",
                details=[{"field": "wait", "max": most, "rule": "live updates", "fix": fix}],
                retry_after=RETRY_AFTER_SECONDS,
            )
        self._orgs[org_id] += 1
        self._count += 1

    def _remove(self, run_id: str, org_id: str, waiter: _Waiter) -> None:
        waiters = self._waiting.get(run_id)
        if waiters is not None and waiter in waiters:
            waiters.discard(waiter)
            if not waiters:
                del self._waiting[run_id]
        self._count -= 1
        self._orgs[org_id] -= 1
        if self._orgs[org_id] <= 0:
            del self._orgs[org_id]

    async def _check_loop(self) -> None:
        """While anyone waits: which of the waited runs changed (or are gone)."""
        failing = False
        while self._waiting:
            await asyncio.sleep(self.recheck)
            if self._draining():
                for waiters in self._waiting.values():
                    for waiter in waiters:
                        waiter.event.set()  # "no change": the page asks again, then backs off
                continue
            run_ids = list(self._waiting)
            if not run_ids:
                break
            try:
                got = await run_in_threadpool(self._versions, run_ids)
            except Exception as exc:  # the store is away: the waits still end at their bound
                if not failing:
                    log.warning("live update check failed (retrying): %s", exc)
                failing = True
                continue
            failing = False
            for run_id in run_ids:
                now = got.get(run_id, "")  # a deleted run: the update reads it as a 404
                for waiter in self._waiting.get(run_id, ()):
                    if now != waiter.seen:
                        waiter.now = now
                        waiter.event.set()


async def _watch(receive: Receive, waiter: _Waiter) -> None:
    """Wake ``waiter`` when its client disconnects (a GET's body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    waiter.event.set()
