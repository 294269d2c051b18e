"""``/v1/runs``: submit, list, read (and long-poll), shards, cancel, delete, logs."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm.exc import StaleDataError

from sylphx._core import limits
from sylphx._core.errors import ServerUnavailable
from sylphx._core.limits import Text
from sylphx._core.spec import MAX_PARALLELISM, RunSpec
from sylphx._core.states import RunState, ShardState
from sylphx._core.views import RunList, RunView, ShardView
from sylphx._server.images import policy as image_policy
from sylphx._server.infra import faults
from sylphx._server.plane import ControlPlane
from sylphx._server.runs import logs, longpoll
from sylphx._server.runs import service as runs
from sylphx._server.runs.hostpaths import check_host_paths
from sylphx._server.store import OrgRow, RunRow
from sylphx._server.tenancy import secrets

from .deps import Org, Plane, RunId, plane_of

__all__ = ["router"]

router = APIRouter()
CAS_RETRIES = 3  # a cancel races the reconciler's writes to the run this often at most
MAX_ATTEMPTS = 10_000  # a bound for the attempt query parameter; a shard's own is smaller
IdempotencyKey = Annotated[
    Text | None,
    Header(
        min_length=1,
        max_length=255,
        description="repeat a submit safely: the same key returns the run it made",
    ),
]


@router.post("/v1/runs", status_code=201, response_model=RunView)
def submit_run(
    spec: RunSpec, org_id: Org, plane: Plane, idempotency_key: IdempotencyKey = None
) -> Response:
    """Store a run and wake the reconciler; a repeated key answers with the run it made."""
    if plane.draining:
        raise ServerUnavailable(
            "the control plane is shutting down and accepts no new runs; running shards"
            " keep running. Fix: retry in a few seconds, once it has restarted."
        )
    faults.check_disk(plane.settings.logs_dir, "log")
    # nothing of the control plane visible, whatever the spec says (422, nothing stored)
    local = plane.executor.name == "local"  # Ray shards run on nodes: no existence check
    check_host_paths(spec, plane.settings, local=local)
    if spec.image is not None:  # resolve + policy + scanner, outside the write lock
        with plane.reads() as s:
            org_row = s.get(OrgRow, org_id)
            policy = org_row.image_policy if org_row else None
        image_policy.admit(spec.image, policy, plane.images, plane.settings.image_scanner)
    with plane.sessions.begin() as s:
        # quota check + reservation in one step: the write session holds SQLite's write
        # lock from BEGIN; on PostgreSQL, FOR UPDATE locks the org row
        org = s.get(OrgRow, org_id, with_for_update=True)
        assert org is not None
        run = runs.replay(s, org.id, idempotency_key, spec)
        if run is not None:  # a repeated submit: the run it made, as it is now
            out = runs.view(run, runs.state_counts(s, [run.id])[run.id])
        else:
            run = runs.submit(
                s,
                spec,
                org,
                capacity=plane.executor.capacity(),
                now=plane.now(),
                idempotency_key=idempotency_key,
            )
            out = runs.view(run, Counter({ShardState.PENDING: spec.parallelism}))
        # rendered before the commit: a run whose answer cannot be sent is not stored
        body = out.model_dump_json(by_alias=True)
    plane.reconciler.wake()
    return Response(body, status_code=201, media_type="application/json")


@router.get("/v1/runs", response_model=RunList)
def list_runs(
    org_id: Org,
    plane: Plane,
    status: RunState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Text | None, Query(max_length=limits.MAX_ID_BYTES)] = None,
) -> RunList:
    """The org's runs, newest first; ``cursor`` is the previous page's ``nextCursor``."""
    with plane.reads() as s:
        return runs.list_runs(s, org_id, status=status, limit=limit, cursor=cursor)


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
    plane = plane_of(request)  # (not a dependency: this path is measured, P3)
    read = functools.partial(_current_run, plane, run_id, org_id)
    if wait is None:
        body = await read()
    else:
        body = await plane.run_waiters.wait(run_id, wait, read, request.receive)
    return Response(body, media_type="application/json")


@router.get("/v1/runs/{run_id}/shards", response_model=list[ShardView])
def get_shards(run_id: RunId, org_id: Org, plane: Plane) -> list[ShardView]:
    """Every shard with its status, attempts, exit code and history."""
    with plane.reads() as s:
        return runs.shard_views(runs.load(s, run_id, org_id, with_attempts=True))


@router.post("/v1/runs/{run_id}/cancel", status_code=202, response_model=RunView)
def cancel_run(run_id: RunId, org_id: Org, plane: Plane) -> RunView:
    """Ask for the run to stop; a queued run is settled at once."""
    for attempt in range(CAS_RETRIES):  # the reconciler may update the run meanwhile
        try:
            with plane.sessions.begin() as s:
                out = runs.view(runs.cancel(s, run_id, org_id, plane.now()))
            break
        except StaleDataError:
            if attempt == CAS_RETRIES - 1:
                raise
    if out.status.terminal:  # a queued run is settled at once: release its long-polls
        plane.run_waiters.ended([run_id])
    plane.reconciler.wake()
    return out


@router.delete("/v1/runs/{run_id}", status_code=204)
def delete_run(run_id: RunId, org_id: Org, plane: Plane) -> Response:
    """Delete an ended run, its shards, attempts and logs (409 while it has not
    ended: cancel it first). Its usage stays: ``GET /v1/usage`` still counts it."""
    with plane.sessions.begin() as s:
        paths = runs.delete(s, run_id, org_id)
    plane.terminal_views.drop(run_id)
    logs.remove(paths, plane.settings.logs_dir)
    plane.executor.forget_run(run_id)
    return Response(status_code=204)


@router.get("/v1/runs/{run_id}/logs")
async def get_logs(
    run_id: RunId,
    org_id: Org,
    plane: Plane,
    shard: Annotated[int, Query(ge=0, lt=MAX_PARALLELISM)],
    stream: Literal["stdout", "stderr"] = "stdout",
    follow: bool = False,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPTS)] = None,
) -> StreamingResponse:
    """One shard's log as stored (secret values were masked as it was written); with
    ``follow``, until the shard ends."""
    body = logs.stream_log(
        plane.reads,
        run_id,
        org_id,
        shard,
        stream,
        attempt=attempt,
        follow=follow,
        legacy_secrets=lambda: _secret_values(plane, run_id, org_id),
    )
    first = await anext(body, b"")  # surface NotFound as a 404 before streaming starts

    async def chained() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in body:
            yield chunk

    return StreamingResponse(chained(), media_type="text/plain; charset=utf-8")


async def _current_run(plane: ControlPlane, run_id: str, org_id: str) -> bytes:
    """The RunView JSON of the org's run: from memory if final, else a shared store read."""
    body = plane.terminal_views.get(run_id, org_id)
    if body is None:
        read = functools.partial(_read_run, plane, run_id, org_id)
        body = await plane.run_reads.read((run_id, org_id), read)
    return body


def _read_run(plane: ControlPlane, run_id: str, org_id: str) -> bytes:
    """The RunView JSON of the org's run; a final one is kept for later reads."""
    with plane.engine.connect() as conn:  # one read transaction, no ORM session
        out, final = runs.read(conn, run_id, org_id, plane.now())
    body = out.model_dump_json(by_alias=True).encode()
    if final:
        plane.terminal_views.put(run_id, org_id, body)
    return body


def _secret_values(plane: ControlPlane, run_id: str, org_id: str) -> list[str]:
    """The current values of the secrets a run names: only for logs written before secrets
    were masked at capture (see logs.stream_log)."""
    with plane.reads() as s:
        run = s.get(RunRow, run_id)
        if run is None or run.org_id != org_id:
            return []
        names = list(run.spec.get("secrets") or [])
        return list(secrets.reveal(s, org_id, names, plane.cipher).values())
