"""Followed log streams: how many one API process serves at once, and the threads their
blocking work runs on.

A followed log (``GET /v1/runs/{id}/logs?follow=true``, one shard's or, with ``all=true``,
every shard's) holds its connection, a coroutine and a poll of the store for as long as
its shards run. Each API process counts the ones it serves: past ``per_org`` open for the
org (``SYLPHX_MAX_LOG_STREAMS_PER_ORG``) or ``total`` for every org together
(``SYLPHX_MAX_LOG_STREAMS``), a new one is refused before its body starts, with a 429
(``quota_exceeded``) and ``Retry-After``. With ``--workers N`` each process counts its own,
so an org may hold up to N times ``per_org`` across them. A stream frees its slot when its
body ends, fails, or its client goes away.

Their blocking work (the store's look at the shards, stat and read of the log files,
masking, decoding and encoding the records) runs on :attr:`LogStreams.limiter`, a few
threads of its own: however many streams poll, the thread pool every sync route shares
(anyio's default 40 threads) is left to those routes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

from sylphx._core.errors import QuotaExceeded

__all__ = ["RETRY_AFTER_SECONDS", "THREADS", "LogStreams"]

THREADS = 8  # log streams' blocking work: threads of their own, this many at most
RETRY_AFTER_SECONDS = 5  # a refused stream: when one of those open may have ended
T = TypeVar("T")


class LogStreams:
    """The followed log streams of one API process, by org, and their threads."""

    def __init__(self, per_org: int, total: int, *, threads: int = THREADS) -> None:
        self.per_org = per_org
        self.total = total
        self.limiter = anyio.CapacityLimiter(threads)
        self._open: Counter[str] = Counter()
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Followed log streams open now, every org's."""
        return self._count

    def open_for(self, org_id: str) -> int:
        """The org's followed log streams open now."""
        return self._open[org_id]

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of the log streams' threads."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def hold(
        self, org_id: str, open_body: Callable[[], Awaitable[AsyncIterator[bytes]]]
    ) -> AsyncIterator[bytes]:
        """The body ``open_body()`` opens, holding one of the org's slots: QuotaExceeded
        (429) at once when none is free, before anything else is done. The slot is freed
        when the body ends, fails or is closed, and when ``open_body`` raises."""
        self._take(org_id)
        try:
            body = await open_body()
        except BaseException:
            self._free(org_id)
            raise
        out = self._held(org_id, body)
        await anext(out)  # started: from here on, closing it frees the slot
        return out

    async def _held(self, org_id: str, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            yield b""  # the primer hold() takes
            async for chunk in body:
                yield chunk
        finally:
            self._free(org_id)
            if isinstance(body, AsyncGenerator):
                await body.aclose()

    def _take(self, org_id: str) -> None:
        with self._lock:
            if self._count >= self.total:
                raise self._refusal(
                    "this API process has",
                    self._count,
                    self.total,
                    "logStreams",
                    "retry in a few seconds, or read the logs without follow",
                )
            if self._open[org_id] >= self.per_org:
                raise self._refusal(
                    "your org has",
                    self._open[org_id],
                    self.per_org,
                    "orgLogStreams",
                    "end one of them (a `sylphx runs logs --follow`), wait for one to end,"
                    " or read the logs without follow",
                )
            self._open[org_id] += 1
            self._count += 1

    def _free(self, org_id: str) -> None:
        with self._lock:
            self._count -= 1
            self._open[org_id] -= 1
            if self._open[org_id] <= 0:
                del self._open[org_id]

    @staticmethod
    def _refusal(who: str, current: int, most: int, limit: str, fix: str) -> QuotaExceeded:
        rule = f"at most {most} followed log streams at once"
        return QuotaExceeded(
            f"{who} {current} followed log streams open, its most ({most}). Fix: {fix}.",
            details=[
                {
                    "field": "follow",
                    "limit": limit,
                    "max": most,
                    "current": current,
                    "rule": rule,
                    "fix": fix,
                }
            ],
            retry_after=RETRY_AFTER_SECONDS,
        )
