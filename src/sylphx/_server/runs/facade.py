"""The run service the HTTP edge calls: submit, read (and long-poll), list, shards, cancel,
delete and logs; the dashboard's grid reads and its live long-poll. It knows neither HTTP
nor the control plane: the plane builds it from the parts it needs (sessions, caches, the
executor, a way to wake the reconciler, a clock), and the routes turn what it returns or
raises into answers."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from cryptography.fernet import Fernet
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from sylphx._core.errors import ServerUnavailable, SylphxError
from sylphx._core.retry import RetryRequest
from sylphx._core.spec import RunSpec
from sylphx._core.states import RunState
from sylphx._core.views import Quote, RunList, RunView, ShardView
from sylphx._server.controller.policy import admission
from sylphx._server.executors import Executor
from sylphx._server.images import policy as image_policy
from sylphx._server.images.eviction import Claim
from sylphx._server.images.store import ImageStore
from sylphx._server.infra import faults
from sylphx._server.store import OrgRow, RunRow, lost_race
from sylphx._server.tenancy import secrets
from sylphx._settings import Settings

from . import all_logs, logs, pins, retry, service, storing
from . import grid as grids
from . import quote as quotes
from .hostpaths import check_host_paths, reads_host
from .live import LiveWaiters
from .logs import Stream
from .longpoll import RunWaiters
from .readcache import SharedReads, TerminalViews
from .slots import Kind, Slots
from .streams import LogStreams
from .submits import GroupCommit, Submit

__all__ = ["CAS_RETRIES", "RunService"]

CAS_RETRIES = 3  # a cancel races the reconciler's writes to the run this often at most
# Submits that name an image resolve it first (a registry look-up, maybe a pull), each on
# a thread of the pool every sync route shares: at most this many an org, and in all
# (a registry that never answers held a thread a submit, and 45 of them every route).
IMAGE_LOOKUPS = (2, 8)  # (per org, in all), in one API process
IMAGES = Kind(
    "image look-ups",
    "image",
    "orgImageLookups",
    "imageLookups",
    "wait for your other submits naming images to be answered, then retry",
    "retry in a few seconds",
)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, eq=False)
class RunService:
    """The org-scoped run operations, over explicit parts.

    ``sessions`` write (BEGIN IMMEDIATE on SQLite), ``reads`` only read and ``engine``
    serves the polling path's Core reads. ``settings`` is read at each call (the logs
    folder, the image scanner, the host paths shards may not see). ``wake`` nudges the
    reconciler after a change; ``draining`` says the process accepts no new runs.
    ``log_streams`` counts the followed log streams open and runs their blocking work."""

    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]
    engine: Engine
    executor: Executor
    images: ImageStore
    settings: Settings
    cipher: Fernet
    wake: Callable[[], None]
    now: Callable[[], datetime]
    draining: Callable[[], bool]
    terminal_views: TerminalViews
    shared_reads: SharedReads
    waiters: RunWaiters
    log_streams: LogStreams
    log_disk: faults.DiskWatch
    group_commit: GroupCommit = field(default_factory=GroupCommit)
    image_lookups: Slots = field(default_factory=lambda: Slots(IMAGES, *IMAGE_LOOKUPS))

    # -- writes --------------------------------------------------------------------------
    async def submit(self, spec: RunSpec, org_id: str, idempotency_key: str | None = None) -> bytes:
        """Store a run, wake the reconciler and return the RunView's JSON once it is
        committed; a repeated ``idempotency_key`` answers with the run it made, as it is
        now. Submits that arrive together share one transaction (see :mod:`.submits`),
        awaited without a thread. The checks before it that touch disks (the log disk's
        room, host paths, an image) run in the thread pool: a hung mount must never stall
        the event loop. A spec that names no host path nor image, while a fresh reading
        of the log disk found room (:class:`~sylphx._server.infra.faults.DiskWatch`),
        touches none: its checks run here, without the thread pool's round trip."""
        # the images held in the cache until the run that pins them is stored, or the
        # submit is cancelled: while its checks run in a thread too (see Claim)
        claim = Claim(self.images.holds)
        try:
            if not reads_host(spec) and self.log_disk.roomy():  # (no system call)
                digests = claim.take(lambda: self._admit(spec, org_id, disk_read=True))
            else:  # off the loop
                digests = await run_in_threadpool(claim.take, lambda: self._admit(spec, org_id))
            ask = Submit(spec, org_id, idempotency_key, digests=digests)
            store = storing.Storing(self.sessions, self.executor, self.now, self.wake)
            return await self.group_commit.wait(ask, store.batch, store.alone)
        finally:
            claim.close()

    def _admit(
        self, spec: RunSpec, org_id: str, *, disk_read: bool = False
    ) -> dict[str, str] | None:
        """What is refused before the write lock: a draining process, a full log disk, host
        paths of the control plane, an image the org's policy (or the scanner) refuses.
        Returns the digest of each image the run names (None: it names none): its shards
        run those images, checked here, whatever the references name by then.
        ``disk_read``: a fresh reading of the log disk found room (see :meth:`submit`)."""
        if self.draining():
            raise ServerUnavailable(
                "the control plane is shutting down and accepts no new runs; running shards"
                " keep running. Fix: retry in a few seconds, once it has restarted."
            )
        if not disk_read:
            self.log_disk.check()
        # the spec's own refusals before the org's state (a 402 once batched): GPU tiers
        admission.check_cpu_tiers(spec.machine, spec.merge.machine if spec.merge else None)
        # nothing of the control plane visible, whatever the spec says (422, nothing stored)
        local = self.executor.name == "local"  # Ray shards run on nodes: no existence check
        check_host_paths(spec, self.settings, local=local)
        return self._images(spec, org_id)

    def _images(self, spec: RunSpec, org_id: str) -> dict[str, str] | None:
        """Refuse an image the org's policy (or the scanner) refuses, or that this
        executor cannot run; the digest of each image reference, admitted, held in the
        image cache (``images.holds``: the caller releases them; a run's second image may
        take minutes to pull, and image GC must not take the first meanwhile)."""
        images: dict[str, str] = {"image": spec.image} if spec.image else {}
        if spec.merge and spec.merge.image and spec.merge.image != spec.image:
            images["merge.image"] = spec.merge.image  # each image checked once
        if not images:
            return None
        self.executor.check_images()  # the executor can run images at all (422 if not)
        with self.reads() as s:
            org_row = s.get(OrgRow, org_id)
            policy = org_row.image_policy if org_row else None
        scanner = self.settings.image_scanner
        # digests this host answers for alone take no slot: a tenant whose registry
        # stalls the slots cannot stop others' pinned images (they never wait on one)
        pinned = {
            r: None if scanner else image_policy.pinned_here(r, self.images)
            for r in images.values()
        }
        slot = not all(pinned.values())  # (the scanner reads the unpacked image: a slot)
        if slot:
            self.image_lookups.take(org_id)  # a registry may take minutes: a thread each
        admitted: dict[str, str] = {}
        try:  # resolve (pull, unpack) + policy + scanner, outside the write lock
            for field, ref in images.items():
                admitted[ref] = image_policy.admit(
                    ref, policy, self.images, scanner, field, pinned=pinned.get(ref)
                )
                self.images.holds.hold([admitted[ref]])
            return admitted
        except BaseException:
            self.images.holds.release(admitted.values())
            raise
        finally:
            if slot:
                self.image_lookups.free(org_id)

    def quote(self, spec: RunSpec, org_id: str) -> Quote:
        """The quote of ``spec`` (``POST /v1/runs?dryRun=true``): every check a submit
        makes, nothing stored or reserved. A spec that breaks a rule is still a 422."""
        check_host_paths(spec, self.settings, local=self.executor.name == "local")
        refused: SylphxError | None = None
        try:
            if self.draining():
                raise ServerUnavailable("the control plane is shutting down; retry shortly")
            self.images.holds.release((self._images(spec, org_id) or {}).values())
        except SylphxError as exc:
            refused = exc
        with self.reads() as s:
            org = s.get(OrgRow, org_id)
            assert org is not None
            capacity = self.executor.capacity()
            now, settings = self.now(), self.settings
            return quotes.quote(
                s, spec, org, capacity=capacity, now=now, settings=settings, refused=refused
            )

    def _racing(self, work: Callable[[Session], T]) -> T:
        """``work`` in one transaction, run again (CAS_RETRIES in all) while it loses a
        race with the reconciler (see store.lost_race)."""
        for attempt in range(CAS_RETRIES):
            try:
                with self.sessions.begin() as s:
                    return work(s)
            except Exception as exc:
                if attempt == CAS_RETRIES - 1 or not lost_race(exc):
                    raise
        raise AssertionError("unreachable")

    def cancel(self, run_id: str, org_id: str) -> RunView:
        """Ask for the run to stop; a queued run is settled at once (and its long-polls
        released)."""
        out = self._racing(lambda s: service.view(service.cancel(s, run_id, org_id, self.now())))
        if out.status.terminal:
            self.waiters.ended([run_id])
        self.wake()
        return out

    def retry(
        self, run_id: str, org_id: str, request: RetryRequest, key: str | None = None
    ) -> bytes:
        """Reopen the ended run for the indices ``request`` names (see ``retry.retry``) and
        return its RunView JSON; a repeated ``key`` reopens it once."""
        self.log_disk.check()

        def reopen(s: Session) -> bytes:
            org = s.get(OrgRow, org_id, with_for_update=True)  # quota + reservation
            assert org is not None
            capacity, now = self.executor.capacity(), self.now()
            run = retry.retry(s, run_id, org, request, capacity=capacity, now=now, key=key)
            return service.view(run).model_dump_json(by_alias=True).encode()

        local = self.executor.name == "local"
        ask = pins.Again(run_id, org_id, local, self.reads, self.sessions, self.image_lookups)
        held = pins.images_again(ask, self.images, reopen)
        try:
            body = self._racing(reopen)
        finally:
            self.images.holds.release(held)
        self.terminal_views.drop(run_id)
        self.wake()
        return body

    def delete(self, run_id: str, org_id: str) -> None:
        """Delete an ended run, its shards, attempts and logs (ConflictError while it has
        not ended). Its usage rows stay."""
        paths = self._racing(lambda s: service.delete(s, run_id, org_id))
        self.terminal_views.drop(run_id)
        logs.remove(paths, self.settings.logs_dir)
        self.executor.forget_run(run_id)

    # -- reads ---------------------------------------------------------------------------
    async def get(
        self,
        run_id: str,
        org_id: str,
        *,
        wait: float | None = None,
        receive: Receive | None = None,
    ) -> bytes:
        """The RunView JSON of the org's run. With ``wait`` seconds, a long-poll: the view
        once the run is terminal, or as it is after ``wait``; ``receive`` (the request's
        ASGI receive) ends the wait early when the client goes away.

        A final view is served from memory; otherwise the run is read in the thread pool,
        one read shared by the requests for it that arrive while it waits to start."""
        read = functools.partial(self._current, run_id, org_id)
        if wait is None:
            return await read()
        return await self.waiters.wait(run_id, wait, read, receive)

    async def _current(self, run_id: str, org_id: str) -> bytes:
        body = self.terminal_views.get(run_id, org_id)
        if body is None:
            read = functools.partial(self._read, run_id, org_id)
            body = await self.shared_reads.read((run_id, org_id), read)
        return body

    def _read(self, run_id: str, org_id: str) -> bytes:
        """The RunView JSON from the store; a final one is kept for later reads."""
        read_at = self.terminal_views.now()
        with self.engine.connect() as conn:  # one read transaction, no ORM session
            out, final = service.read(conn, run_id, org_id, self.now())
        body = out.model_dump_json(by_alias=True).encode()
        if final:
            self.terminal_views.put(run_id, org_id, body, read_at)
        return body

    def list_runs(
        self, org_id: str, *, status: RunState | None, limit: int, cursor: str | None
    ) -> RunList:
        """The org's runs, newest first; ``cursor`` is the previous page's last id."""
        with self.reads() as s:
            return service.list_runs(s, org_id, status=status, limit=limit, cursor=cursor)

    def shards(self, run_id: str, org_id: str) -> list[ShardView]:
        """Every shard of the org's run with its status, attempts, exit code and history."""
        with self.reads() as s:
            return service.shard_views(service.load(s, run_id, org_id, with_attempts=True))

    # -- the dashboard -------------------------------------------------------------------
    def grid(self, run_id: str, org_id: str, *, history: bool) -> list[ShardView]:
        """The org's run's shards in index order (none for another org's run), as Core
        reads: without attempts for the live grid, with them (``history``) for the
        timeline (see :mod:`.grid`)."""
        read = grids.shards_with_history if history else grids.shard_cells
        return read(self.engine, run_id, org_id)

    async def live(
        self,
        run_id: str,
        org_id: str,
        seen: str | None,
        *,
        wait: float,
        receive: Receive | None = None,
    ) -> str:
        """The org's run's live version (NotFound for another org's): at once when it is
        not ``seen``, else once it changes, or ``seen`` after ``wait`` seconds: the
        dashboard's long-poll (see :mod:`.live`)."""
        now = await run_in_threadpool(grids.version, self.engine, run_id, org_id)
        if seen is None or now != seen or wait <= 0:
            return now
        return await self.live_waiters.wait(run_id, org_id, seen, wait, receive)

    @functools.cached_property
    def live_waiters(self) -> LiveWaiters:
        """The dashboard's waiting live updates in this process (made at the first)."""
        return LiveWaiters(functools.partial(grids.versions, self.engine), draining=self.draining)

    async def logs(
        self,
        run_id: str,
        org_id: str,
        shard: int,
        stream: Stream,
        *,
        attempt: int | None,
        follow: bool,
        last: int | None = None,
    ) -> AsyncIterator[bytes]:
        """One shard's log as stored (secret values masked as it was written); with
        ``follow``, until the shard ends; with ``last``, from that many bytes before its
        end (the rest is not read). NotFound and ValidationError are raised before
        the body is returned, and (following) QuotaExceeded when the org or this process
        has its most followed log streams open (see :mod:`.streams`)."""
        opened = functools.partial(
            logs.open_log,
            self.reads,
            run_id,
            org_id,
            shard,
            stream,
            attempt=attempt,
            follow=follow,
            last=last,
            legacy_secrets=functools.partial(self._secret_values, run_id, org_id),
            run=self.log_streams.run,
        )
        return await (self.log_streams.hold(org_id, opened) if follow else opened())

    async def all_logs(
        self,
        run_id: str,
        org_id: str,
        stream: Stream,
        *,
        indices: str | None,
        failed: bool,
        follow: bool,
    ) -> AsyncIterator[bytes]:
        """Every shard's log (or those of ``indices``, or only the failed ones) as NDJSON
        records of whole lines (see :mod:`.all_logs`); NotFound, ValidationError and
        (following) QuotaExceeded are raised before the body is returned."""
        opened = functools.partial(
            all_logs.open_all,
            self.reads,
            run_id,
            org_id,
            stream,
            indices=indices,
            failed=failed,
            follow=follow,
            legacy_secrets=functools.partial(self._secret_values, run_id, org_id),
            run=self.log_streams.run,
        )
        return await (self.log_streams.hold(org_id, opened) if follow else opened())

    def _secret_values(self, run_id: str, org_id: str) -> list[str]:
        """The current values of the secrets a run names: only for logs written before
        secrets were masked at capture (see logs.stream_log)."""
        with self.reads() as s:
            run = s.get(RunRow, run_id)
            if run is None or run.org_id != org_id:
                return []
            names = list(run.spec.get("secrets") or [])
            return list(secrets.reveal(s, org_id, names, self.cipher).values())
