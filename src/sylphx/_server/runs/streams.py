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

The dashboard's log reads without follow (a shard page's tail, a download) are bounded
the same way, by slots of their own: at most :data:`READS_PER_ORG` of an org's at once.

Their blocking work (the store's look at the shards, stat and read of the log files,
masking, decoding and encoding the records) runs on :attr:`LogStreams.limiter`, a few
threads of its own: however many streams poll, the thread pool every sync route shares
(anyio's default 40 threads) is left to those routes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

from .slots import RETRY_AFTER_SECONDS, Kind, Slots

__all__ = ["READS_PER_ORG", "RETRY_AFTER_SECONDS", "THREADS", "LogStreams"]

THREADS = 8  # log streams' blocking work: threads of their own, this many at most
READS_PER_ORG = 4  # the dashboard's log reads without follow (tails, downloads): per org
READS_TOTAL = 64  # ... and every org's together, in one API process
T = TypeVar("T")


FOLLOWED = Kind(
    "followed log streams",
    "follow",
    "orgLogStreams",
    "logStreams",
    "end one of them (a `sylphx runs logs --follow`), wait for one to end,"
    " or read the logs without follow",
    "retry in a few seconds, or read the logs without follow",
)
READS = Kind(
    "log reads",
    "log",
    "orgLogReads",
    "logReads",
    "wait for your other log pages or downloads to finish, then retry",
    "retry in a few seconds",
)


class LogStreams:
    """The followed log streams of one API process, by org, and their threads; and the
    dashboard's log reads without follow (a page's tail, a download), bounded the same
    way (``reads_per_org``, ``reads_total``)."""

    def __init__(
        self,
        per_org: int,
        total: int,
        *,
        threads: int = THREADS,
        reads_per_org: int = READS_PER_ORG,
        reads_total: int = READS_TOTAL,
    ) -> None:
        self.per_org = per_org
        self.total = total
        self.limiter = anyio.CapacityLimiter(threads)
        self._follows = Slots(FOLLOWED, per_org, total)
        self._reads = Slots(READS, reads_per_org, reads_total)

    def __len__(self) -> int:
        """Followed log streams open now, every org's."""
        return self._follows.count

    def open_for(self, org_id: str) -> int:
        """The org's followed log streams open now."""
        return self._follows.open[org_id]

    def reading_for(self, org_id: str) -> int:
        """The org's log reads without follow open now."""
        return self._reads.open[org_id]

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of the log streams' threads."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def hold(
        self,
        org_id: str,
        open_body: Callable[[], Awaitable[AsyncIterator[bytes]]],
        *,
        follow: bool = True,
    ) -> AsyncIterator[bytes]:
        """The body ``open_body()`` opens, holding one of the org's slots (of followed
        streams, or with ``follow=False`` of reads): QuotaExceeded (429) at once when none
        is free, before anything else is done. The slot is freed when the body ends, fails
        or is closed, and when ``open_body`` raises."""
        slots = self._follows if follow else self._reads
        slots.take(org_id)
        try:
            body = await open_body()
        except BaseException:
            slots.free(org_id)
            raise
        out = self._held(slots, org_id, body)
        await anext(out)  # started: from here on, closing it frees the slot
        return out

    async def _held(
        self, slots: Slots, org_id: str, body: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        try:
            yield b""  # the primer hold() takes
            async for chunk in body:
                yield chunk
        finally:
            slots.free(org_id)
            if isinstance(body, AsyncGenerator):
                await body.aclose()
