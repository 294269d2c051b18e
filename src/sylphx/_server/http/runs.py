"""``/v1/runs``: submit, list, read (and long-poll), shards, cancel, retry, delete, logs.

HTTP only: parameters, status codes, streaming. What each route does is a method of
:class:`~sylphx._server.runs.facade.RunService`."""

from __future__ import annotations

from typing import Annotated, Literal, NoReturn

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from sylphx._core import limits
from sylphx._core.errors import ValidationError
from sylphx._core.limits import Text
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.retry import RetryRequest
from sylphx._core.spec import MAX_PARALLELISM, RunSpec
from sylphx._core.states import RunState
from sylphx._core.views import Quote, RunList, RunView, ShardView
from sylphx._server.runs import longpoll

from .deps import Org, RunId, Runs, plane_of
from .streaming import ClosingStream

__all__ = ["router"]

router = APIRouter()
MAX_ATTEMPTS = 10_000  # a bound for the attempt query parameter; a shard's own is smaller
IdempotencyKey = Annotated[
    Text | None,
    Header(
        min_length=1,
        max_length=255,
        description="repeat a submit safely: the same key returns the run it made",
    ),
]


# A plain submit is served by fast_submit.py in front of this route (ADR 0010): a new
# header or body rule here must be checked there too (a new query parameter need not).
@router.post(
    "/v1/runs",
    status_code=201,
    response_model=RunView,
    responses={200: {"model": Quote, "description": "dryRun=true: the quote, nothing stored"}},
)
async def submit_run(
    spec: RunSpec,
    org_id: Org,
    runs: Runs,
    idempotency_key: IdempotencyKey = None,
    dry_run: Annotated[
        bool, Query(alias="dryRun", description="quote it: every check, nothing stored")
    ] = False,
) -> Response:
    """Store a run and wake the reconciler; a repeated key answers with the run it made.
    With ``dryRun=true``, a quote instead: the admission verdict, the cost ceiling, an
    expected cost from the org's history and the credit it would use (200)."""
    if dry_run:
        quote = await run_in_threadpool(runs.quote, spec, org_id)
        return Response(quote.model_dump_json(by_alias=True), media_type="application/json")
    body = await runs.submit(spec, org_id, idempotency_key)  # awaited: no thread waits
    return Response(body, status_code=201, media_type="application/json")


@router.get("/v1/runs", response_model=RunList)
def list_runs(
    org_id: Org,
    runs: Runs,
    status: RunState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Text | None, Query(max_length=limits.MAX_ID_BYTES)] = None,
) -> RunList:
    """The org's runs, newest first; ``cursor`` is the previous page's ``nextCursor``."""
    return runs.list_runs(org_id, status=status, limit=limit, cursor=cursor)


@router.get("/v1/runs/{run_id}", response_model=RunView)
async def get_run(
    run_id: RunId,
    org_id: Org,
    request: Request,
    wait: Annotated[
        float | None,
        Query(gt=0, le=longpoll.MAX_WAIT, description="long-poll: seconds to wait for the end"),
    ] = None,
) -> Response:
    """The run: its effective spec, aggregate and message.

    ``wait=SECONDS`` (0 < wait <= 60) makes it a long-poll: the answer comes as soon as
    the run is terminal (succeeded, partial, failed, cancelled, timed_out), or after
    ``wait`` seconds with the view it has then; repeat it to wait longer. An unknown
    run (or another org's) is a 404 at once. A waiting request holds no thread; this
    process's reconciler releases it when a pass ends the run (while another process
    reconciles, a check of the store every 0.5 s does). See :mod:`..longpoll`.

    The hot polling path: a final view is served from memory; otherwise the run is
    read in the thread pool, one read shared by the requests for it that arrive while
    it waits to start. Either way the body is the RunView's JSON, rendered once."""
    runs = plane_of(request).runs  # (not a dependency: this path is measured, P3)
    body = await runs.get(run_id, org_id, wait=wait, receive=request.receive)
    return Response(body, media_type="application/json")


@router.get("/v1/runs/{run_id}/shards", response_model=list[ShardView])
def get_shards(run_id: RunId, org_id: Org, runs: Runs) -> list[ShardView]:
    """Every shard with its status, attempts, exit code and history."""
    return runs.shards(run_id, org_id)


@router.post("/v1/runs/{run_id}/cancel", status_code=202, response_model=RunView)
def cancel_run(run_id: RunId, org_id: Org, runs: Runs) -> RunView:
    """Ask for the run to stop; a queued run is settled at once."""
    return runs.cancel(run_id, org_id)


RetryKey = Annotated[
    Text | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="repeat a retry safely: the same key reopens the run once",
    ),
]


@router.post("/v1/runs/{run_id}/retry", response_model=RunView)
def retry_run(
    run_id: RunId,
    org_id: Org,
    runs: Runs,
    body: RetryRequest | None = None,
    idempotency_key: RetryKey = None,
) -> Response:
    """Run the unsuccessful indices of an ended run again, in the same run: ``indices``
    (a compressed set, ``"2,5,7-9"``; default every index that ended failed, timed_out
    or cancelled) go back to pending with a fresh retry budget and new attempts; the
    run is queued again, keeps its id, spec and volumes, and counts ``reopened``.
    Admission and quotas apply as to a submit of that many shards (429 over budget).
    409: the run has not ended, an index named succeeded, or nothing is left to retry;
    422: an index the run does not have."""
    out = runs.retry(run_id, org_id, body or RetryRequest(), idempotency_key)
    return Response(out, media_type="application/json")


@router.delete("/v1/runs/{run_id}", status_code=204)
def delete_run(run_id: RunId, org_id: Org, runs: Runs) -> Response:
    """Delete an ended run, its shards, attempts and logs (409 while it has not
    ended: cancel it first). Its usage stays: ``GET /v1/usage`` still counts it."""
    runs.delete(run_id, org_id)
    return Response(status_code=204)


@router.get("/v1/runs/{run_id}/logs")
async def get_logs(
    run_id: RunId,
    org_id: Org,
    runs: Runs,
    shard: Annotated[int | None, Query(ge=0, lt=MAX_PARALLELISM)] = None,
    stream: Literal["stdout", "stderr"] = "stdout",
    follow: bool = False,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPTS)] = None,
    merge: bool = False,
    all_shards: Annotated[
        bool, Query(alias="all", description="every shard's log in one NDJSON stream")
    ] = False,
    indices: Annotated[
        Text | None,
        Query(max_length=4096, description='like all=true, for these shards only ("0-3,7")'),
    ] = None,
    failed: Annotated[
        bool, Query(description="with all or indices: only shards that ended failed or timed_out")
    ] = False,
) -> StreamingResponse:
    """One shard's log (or, with ``merge=true``, the merge step's) as stored (secret values
    were masked as it was written); with ``follow``, until the shard ends.

    With ``all=true`` (or ``indices``), every shard's log in this one response, as
    ``application/x-ndjson``: one ``{"shard", "attempt", "data", "ts"}`` record per line,
    ``data`` whole lines of that shard (lines of two shards never mix), ``ts`` when the
    server read them. With ``follow``, records come as lines do, until every shard
    ended and its log is read. ``failed=true``: only shards that ended failed or
    timed_out, each sent whole once ended (following, also those that end so later).
    A line over 256 KiB is sent in pieces.

    ``follow=true`` takes one of the followed log streams an org may have open at once in
    this API process (``SYLPHX_MAX_LOG_STREAMS_PER_ORG``, 32) and one of the process's
    (``SYLPHX_MAX_LOG_STREAMS``, 512): with none free, a 429 (``quota_exceeded``, with
    ``Retry-After``) before any byte. The slot is freed when the stream ends or its
    client goes away."""
    if all_shards or indices is not None:
        many = "all=true" if all_shards else "indices"
        _refuse_with(many, shard=shard is not None, merge=merge, attempt=attempt is not None)
        body = await runs.all_logs(
            run_id, org_id, stream, indices=indices, failed=failed, follow=follow
        )
        return ClosingStream(body, media_type="application/x-ndjson")
    if failed:
        _refuse("failed", "needs all=true or indices", "add all=true, or drop failed")
    if (shard is None) == (not merge):
        fix = (
            "give shard=INDEX for a shard's log, merge=true for the merge step's,"
            " or all=true for every shard's"
        )
        said = "is required" if shard is None else "cannot be given with merge=true"
        _refuse("shard", said, fix)
    index = MERGE_INDEX if merge else shard
    assert index is not None
    one = await runs.logs(run_id, org_id, index, stream, attempt=attempt, follow=follow)
    return ClosingStream(one, media_type="text/plain; charset=utf-8")


def _refuse_with(many: str, *, shard: bool, merge: bool, attempt: bool) -> None:
    """422 for a parameter that names one log beside ``many`` (all=true or indices)."""
    if shard:
        _refuse(
            "shard",
            f"cannot be given with {many}",
            f"drop shard for every shard's log, or drop {many} for one shard's",
        )
    if merge:
        _refuse(
            "merge",
            f"cannot be given with {many}",
            f"drop merge=true, or drop {many} for the merge step's log",
        )
    if attempt:
        _refuse(
            "attempt",
            f"cannot be given with {many}",
            "drop attempt (each shard's newest is read), or give shard=INDEX",
        )


def _refuse(field: str, said: str, fix: str) -> NoReturn:
    raise ValidationError(
        f"{field}: {said}. Fix: {fix}.", details=[{"field": field, "rule": said, "fix": fix}]
    )
