"""A shard's page: its attempts, and the log viewer (stdout or stderr, an attempt picker,
follow live, download). The log is read through the RunService as the API reads it
(secrets masked as written); the page reads and shows its last ``SHOWN_BYTES`` as text.
Reading a log without follow (the page, a download) takes one of the org's log-read
slots, as following one takes one of its followed streams."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from sylphx._core.errors import NotFound
from sylphx._core.spec import MAX_PARALLELISM
from sylphx._core.views import RunView
from sylphx._server.http.deps import RunId
from sylphx._server.http.streaming import ClosingStream

from .web import UIRoute, Viewer, page, plane_of

__all__ = ["router"]

router = APIRouter(route_class=UIRoute, include_in_schema=False)
SHOWN_BYTES = 512 * 1024
Index = Annotated[int, Query(ge=0, lt=MAX_PARALLELISM)]
Stream = Literal["stdout", "stderr"]
Attempt = Annotated[int | None, Query(ge=1, le=10_000)]


async def _read(
    request: Request,
    run_id: str,
    org_id: str,
    index: int,
    stream: Stream,
    attempt: int | None,
    *,
    last: int | None = None,
) -> AsyncIterator[bytes]:
    """The log's body, without follow, holding one of the org's log-read slots until it
    ends (429 with Retry-After past the org's most: see ``runs.streams``)."""
    runs = plane_of(request).runs
    opened = functools.partial(
        runs.logs, run_id, org_id, index, stream, attempt=attempt, follow=False, last=last
    )
    return await runs.log_streams.hold(org_id, opened, follow=False)


async def _tail(
    request: Request, run_id: str, org_id: str, index: int, stream: Stream, attempt: int | None
) -> tuple[str, bool]:
    """The log's last ``SHOWN_BYTES`` as text, and whether the start was cut. Only those
    bytes (and one more: to tell whether there was more) are read from the file."""
    body = await _read(request, run_id, org_id, index, stream, attempt, last=SHOWN_BYTES + 1)
    data = bytearray()
    try:
        async for chunk in body:
            data += chunk
            if len(data) > 2 * SHOWN_BYTES:  # the log grew while it was read
                del data[: len(data) - SHOWN_BYTES - 1]
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
    cut = len(data) > SHOWN_BYTES
    if cut:
        del data[: len(data) - SHOWN_BYTES]
    return data.decode("utf-8", "replace"), cut


@router.get("/ui/runs/{run_id}/shards/{index}")
async def shard_page(
    request: Request,
    me: Viewer,
    run_id: RunId,
    index: int,
    stream: Stream = "stdout",
    attempt: Attempt = None,
) -> HTMLResponse:
    """A shard: status, attempts, and its log."""
    plane = plane_of(request)
    run = RunView.model_validate_json(await plane.runs.get(run_id, me.org_id))
    shards = await run_in_threadpool(plane.runs.shards, run_id, me.org_id)
    shard = next((s for s in shards if s.index == index), None)
    if shard is None:
        raise NotFound(f"run {run_id} has no shard {index}")
    text, cut = await _tail(request, run_id, me.org_id, index, stream, attempt)
    chosen = attempt or (max((a.attempt for a in shard.history), default=None))
    return page(
        "shard.html",
        request,
        me,
        run=run,
        shard=shard,
        stream=stream,
        attempt=chosen,
        log=text,
        cut=cut,
        active=not shard.status.terminal,
    )


@router.get("/ui/runs/{run_id}/shards/{index}/log")
async def shard_log(
    request: Request,
    me: Viewer,
    run_id: RunId,
    index: int,
    stream: Stream = "stdout",
    attempt: Attempt = None,
    follow: bool = False,
    download: bool = False,
) -> StreamingResponse:
    """The raw log (text/plain; as an attachment with ``download``); ``follow`` streams
    it until the shard ends (one of the org's followed log streams, as in the API)."""
    if not 0 <= index < MAX_PARALLELISM:
        raise NotFound(f"run {run_id} has no shard {index}")
    if follow:  # one of the org's followed log streams, as in the API
        body = await plane_of(request).runs.logs(
            run_id, me.org_id, index, stream, attempt=attempt, follow=True
        )
    else:  # one of the org's log reads
        body = await _read(request, run_id, me.org_id, index, stream, attempt)
    headers = {}
    if download:
        name = f"{run_id}-{index}-{stream}" + (f"-{attempt}" if attempt else "") + ".log"
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return ClosingStream(body, media_type="text/plain; charset=utf-8", headers=headers)
