"""The HTTP API (FastAPI). Errors are mapped to HTTP here, once, from the error tree."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from importlib.metadata import version
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm.exc import StaleDataError

from .. import _limits as limits
from .._errors import ServerUnavailable
from .._limits import Text
from .._spec import MAX_PARALLELISM, RunSpec
from .._states import RunState, ShardState
from .._views import (
    OrgView,
    RunList,
    RunView,
    SecretView,
    ShardView,
    UsageReport,
    VolumeView,
)
from . import (
    billing,
    edge,
    faults,
    health,
    image_policy,
    logs,
    longpoll,
    openapi,
    orgs,
    runs,
    secrets,
    volumes,
)
from .hostpaths import check_host_paths
from .plane import ControlPlane
from .store import OrgRow, RunRow

log = logging.getLogger("sylphx.api")
CAS_RETRIES = 3
MAX_ATTEMPTS = 10_000  # a bound for the attempt query parameter; a shard's own is smaller


class VolumeCreate(BaseModel):
    """A volume to create; its name is for people (ids name volumes in specs)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, Field(max_length=limits.MAX_VOLUME_NAME_BYTES)] | None = None


class SecretPut(BaseModel):
    """A secret to store: its env-var style name and its value (never returned)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        Text, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=limits.MAX_NAME_BYTES)
    ]
    value: Annotated[Text, Field(max_length=limits.MAX_SECRET_BYTES)]


# Ids in URLs: bounded, NUL-free UTF-8 (what no id can be is a 422, an unknown id a 404).
RunId = Annotated[Text, Path(max_length=limits.MAX_ID_BYTES)]
VolumeId = Annotated[Text, Path(max_length=limits.MAX_ID_BYTES)]
SecretName = Annotated[Text, Path(max_length=limits.MAX_NAME_BYTES)]


async def current_org(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The caller's org id, from ``Authorization: Bearer <key>`` (401 otherwise). A key's
    store lookup is reused for ``SYLPHX_AUTH_CACHE_SECONDS`` (see :mod:`.readcache`)."""
    plane: ControlPlane = request.app.state.plane
    key_hash = orgs.bearer_hash(authorization)
    org_id = plane.keys.get(key_hash)
    if org_id is None:
        checked_at = plane.keys.now()
        org_id = await run_in_threadpool(_org_of_key, plane, key_hash)
        plane.keys.put(key_hash, org_id, checked_at)
    return org_id


def _org_of_key(plane: ControlPlane, key_hash: str) -> str:
    with plane.reads() as s:
        return orgs.org_of_key(s, key_hash)


Org = Annotated[str, Depends(current_org)]


def create_app(plane: ControlPlane, *, embedded: bool = False) -> FastAPI:
    """The API app around ``plane``; the app's lifespan starts and stops the plane.
    ``embedded``: the local default, which creates its ``local`` org and key on start."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        plane.start()
        if embedded:
            plane.bootstrap_local()
        try:
            yield
        finally:
            plane.stop()

    app = FastAPI(title="sylphx", version=version("sylphx"), lifespan=lifespan)
    app.state.plane = plane
    sessions = plane.sessions
    reads = plane.reads

    edge.install(app, plane)
    health.install(app, plane)  # /healthz, /readyz
    openapi.install(app)  # the document, completed: every status, the one error body

    @app.get("/v1/org", response_model=OrgView)
    def get_org(org_id: Org) -> OrgView:
        with reads() as s:
            org = s.get(OrgRow, org_id)
            assert org is not None
            plan = orgs.limits(org)
            return OrgView(
                id=org.id,
                name=org.name,
                plan=org.plan,
                max_parallelism=plan.max_parallelism,
                concurrent_shards=plan.concurrent_shards,
                shards_in_use=runs.shards_in_use(s, org.id),
                monthly_credit_seconds=plan.monthly_credit_seconds,
            )

    @app.post("/v1/runs", status_code=201, response_model=RunView)
    def submit_run(
        spec: RunSpec,
        org_id: Org,
        idempotency_key: Annotated[
            Text | None,
            Header(
                min_length=1,
                max_length=255,
                description="repeat a submit safely: the same key returns the run it made",
            ),
        ] = None,
    ) -> Response:
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
            with reads() as s:
                org_row = s.get(OrgRow, org_id)
                policy = org_row.image_policy if org_row else None
            image_policy.admit(spec.image, policy, plane.images, plane.settings.image_scanner)
        with sessions.begin() as s:
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

    @app.get("/v1/runs", response_model=RunList)
    def list_runs(
        org_id: Org,
        status: RunState | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[Text | None, Query(max_length=limits.MAX_ID_BYTES)] = None,
    ) -> RunList:
        with reads() as s:
            return runs.list_runs(s, org_id, status=status, limit=limit, cursor=cursor)

    @app.get("/v1/runs/{run_id}", response_model=RunView)
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
        reconciles, a check of the store every 0.5 s does). See :mod:`.longpoll`.

        The hot polling path: a final view is served from memory; otherwise the run is
        read in the thread pool, one read shared by the requests for it that arrive while
        it waits to start. Either way the body is the RunView's JSON, rendered once."""
        read = functools.partial(_current_run, plane, run_id, org_id)
        if wait is None:
            body = await read()
        else:
            body = await plane.run_waiters.wait(run_id, wait, read, request.receive)
        return Response(body, media_type="application/json")

    @app.get("/v1/runs/{run_id}/shards", response_model=list[ShardView])
    def get_shards(run_id: RunId, org_id: Org) -> list[ShardView]:
        with reads() as s:
            return runs.shard_views(runs.load(s, run_id, org_id, with_attempts=True))

    @app.post("/v1/runs/{run_id}/cancel", status_code=202, response_model=RunView)
    def cancel_run(run_id: RunId, org_id: Org) -> RunView:
        for attempt in range(CAS_RETRIES):  # the reconciler may update the run meanwhile
            try:
                with sessions.begin() as s:
                    out = runs.view(runs.cancel(s, run_id, org_id, plane.now()))
                break
            except StaleDataError:
                if attempt == CAS_RETRIES - 1:
                    raise
        if out.status.terminal:  # a queued run is settled at once: release its long-polls
            plane.run_waiters.ended([run_id])
        plane.reconciler.wake()
        return out

    @app.delete("/v1/runs/{run_id}", status_code=204)
    def delete_run(run_id: RunId, org_id: Org) -> Response:
        """Delete an ended run, its shards, attempts and logs (409 while it has not
        ended: cancel it first). Its usage stays: ``GET /v1/usage`` still counts it."""
        with sessions.begin() as s:
            paths = runs.delete(s, run_id, org_id)
        plane.terminal_views.drop(run_id)
        logs.remove(paths, plane.settings.logs_dir)
        plane.executor.forget_run(run_id)
        return Response(status_code=204)

    @app.get("/v1/runs/{run_id}/logs")
    async def get_logs(
        run_id: RunId,
        org_id: Org,
        shard: Annotated[int, Query(ge=0, lt=MAX_PARALLELISM)],
        stream: Literal["stdout", "stderr"] = "stdout",
        follow: bool = False,
        attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPTS)] = None,
    ) -> StreamingResponse:
        # served as stored: secret values were masked as the log was written
        body = logs.stream_log(
            reads,
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

    @app.post("/v1/volumes", status_code=201, response_model=VolumeView)
    def create_volume(org_id: Org, body: VolumeCreate | None = None) -> VolumeView:
        with sessions.begin() as s:
            return volumes.create(
                s,
                org_id,
                name=body.name if body else None,
                root=plane.settings.volumes_dir,
                now=plane.now(),
            )

    @app.get("/v1/volumes", response_model=list[VolumeView])
    def list_volumes(org_id: Org) -> list[VolumeView]:
        with reads() as s:
            return volumes.list_all(s, org_id)

    @app.delete("/v1/volumes/{volume_id}", status_code=204)
    def delete_volume(volume_id: VolumeId, org_id: Org) -> Response:
        with sessions.begin() as s:
            volumes.delete(s, volume_id, org_id)
        return Response(status_code=204)

    @app.post("/v1/secrets", status_code=201, response_model=SecretView)
    def put_secret(body: SecretPut, org_id: Org, response: Response) -> SecretView:
        """Create or replace a secret (201 created, 200 replaced); the value is never
        returned by any endpoint."""
        with sessions.begin() as s:
            created = secrets.put(s, org_id, body.name, body.value, plane.cipher, plane.now())
        if not created:
            response.status_code = 200
        with reads() as s:
            return next(v for v in secrets.list_all(s, org_id) if v.name == body.name)

    @app.get("/v1/secrets", response_model=list[SecretView])
    def list_secrets(org_id: Org) -> list[SecretView]:
        with reads() as s:
            return secrets.list_all(s, org_id)

    @app.delete("/v1/secrets/{name}", status_code=204)
    def delete_secret(name: SecretName, org_id: Org) -> Response:
        with sessions.begin() as s:
            secrets.delete(s, org_id, name)
        return Response(status_code=204)

    @app.get("/v1/usage", response_model=UsageReport)
    def get_usage(
        org_id: Org,
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: datetime | None = None,
    ) -> UsageReport:
        """Compute-seconds by run and machine tier over [from, to) (default: this month so
        far), the monthly credits applied first, and the billable remainder."""
        start, end = billing.window(from_, to, plane.now())  # 422 unless a bounded range
        with reads() as s:
            org = s.get(OrgRow, org_id)
            assert org is not None
            return billing.report(s, org, start, end)

    return app


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
