"""The reconciler: a level-triggered loop that drives runs to their terminal state.

Each pass re-reads the store (every active run surveyed in aggregate queries, shards
loaded only for the runs that need a close look, see :mod:`.survey`; all of them every
``FULL_PASS_SECONDS``), asks the policies what should happen, acts through the executor
and writes the result. Running a pass twice in a row changes nothing the second time.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import StorageFull
from sylphx._core.spec import RunSpec
from sylphx._core.states import RunState, ShardState
from sylphx._server.executors.base import Executor, Exit, Signal
from sylphx._server.infra import faults
from sylphx._server.infra.lease import Lease
from sylphx._server.store import RunRow
from sylphx._server.store.records import ShardRecord
from sylphx._settings import Settings

from . import (
    bulkhead,
    deadlines,
    launching,
    merging,
    rollup,
    scheduling,
    settle,
    spending,
    survey,
)
from .bulkhead import PASS_LEVEL
from .loop import PassLoop
from .policy import failures, queue
from .specs import ACTIVE_RUNS, Specs
from .transitions import transition

log = logging.getLogger("sylphx.reconciler")
Clock = Callable[[], datetime]
ACTIVE = survey.ACTIVE
FULL_PASS_SECONDS = 60.0  # a pass loads every active run's shards at least this often
# What a pass was doing for a run when it failed (see bulkhead): "Internal error while ..."
PENDING = ShardState.PENDING
READING, SETTLING = "reading its spec", "settling its shards' exits"
QUEUEING, STARTING = "deciding whether it starts", "starting its shards"
RESTARTING = "stopping its gang to admit it again whole"
SPENDING = "metering it against its spend cap"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Reconciler(PassLoop):
    """Drives every active run one step closer to done on each :meth:`tick`; the loop
    that runs the passes (waking, batching, the lease) is :class:`.loop.PassLoop`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        executor: Executor,
        settings: Settings,
        clock: Clock = utcnow,
        cipher: Fernet | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.cipher = cipher
        self.sessions = sessions
        self.lease = lease  # None: this process is the only reconciler of its store
        self.executor = executor
        self.settings = settings
        self.clock = clock
        super().__init__()
        self._signals: list[tuple[str, Signal]] = []  # decided by this pass, sent after it
        self._disk_full: str | None = None  # the last "log disk full" message logged
        self.log_disk = faults.DiskWatch(settings.logs_dir, "log")  # read every pass
        self._last_full = float("-inf")  # monotonic time of the last pass that loaded all
        self._specs = Specs()  # parsed once per version of a run's row
        self._bulkhead = bulkhead.Bulkhead()  # runs that failed a step: parked or ended
        self.on_pass: Callable[[list[str]], None] = lambda ended: None  # hook, see tick()
        # an executor that batches its exits itself: no batch period (docs/adr/0007)
        executor.set_waker(self._wake_paced if executor.batches_exits else self._wake_batched)

    # -- one pass ----------------------------------------------------------
    def tick(self) -> None:
        """One level-triggered pass over all active runs."""
        self._signals = []
        try:
            ended = self._pass()
        except BaseException:  # drop what it prepared: nothing of it started yet
            self.executor.flush(discard=True)
            raise
        self._specs.committed()
        self._bulkhead.commit(ended)  # the strikes of the runs that failed a step count
        # Only now that the pass committed its decisions does it act on them (ADR 0004):
        # a pass rolled back must leave no process the store does not know, and no shard
        # killed for no recorded reason. A start that fails from here on is reported by the
        # executor's next poll; one cut short by a crash is launched again by recover().
        try:
            self.executor.flush()  # the attempts it stored: the local executor's one batch
        finally:
            for handle, sig in self._signals:
                self.executor.signal(handle, sig)
            self.on_pass(ended)  # hook: the ids of the runs this committed pass ended

    def _pass(self) -> list[str]:
        bh = self._bulkhead
        bh.begin()
        with self.sessions.begin() as s:
            runs = list(s.scalars(ACTIVE_RUNS))  # (their specs are read apart: see .specs)
            specs = self._parse(s, runs)
            exits = self.executor.poll()
            self._last_exits = len(exits)
            self._collect(s, exits, specs)
            now = self.clock()  # then processes placed (Ray), or their true start (local):
            launching.mark_started(s, self.executor.starts(), now)
            capped = [run for run in bh.live(runs) if specs[run.id].max_compute_seconds]
            bh.each(s, capped, SPENDING, lambda run: spending.check(s, run, specs[run.id], now))
            focus = self._focus(s, bh.live(runs), specs, now)
            shards = survey.load_shards(s, focus)
            grace = self.settings.kill_grace_seconds, self.settings.preemption_grace_seconds
            stop = functools.partial(deadlines.stop, kill_grace=grace[0], preemption_grace=grace[1])
            stops = bh.each(
                s,
                focus,
                "stopping its shards",
                lambda run: stop(s, run, shards[run.id], specs[run.id], now),
            )
            for signals in stops.values():  # they go out once their reasons are stored
                self._signals += signals
            specs |= bh.each(
                s,
                runs,
                "checking its admission deadline",
                lambda run: scheduling.expire_admission(
                    s, run, specs[run.id], now, lambda: self._specs.full(s, run.id, specs[run.id])
                ),
            )
            counts = survey.shard_counts(s)
            bh.each(  # more than maxFailedIndexes failed: stopped from the next pass on
                s,
                [run for run in bh.live(runs) if run.fail_reason is None],
                "checking its failure limit",
                lambda run: failures.fail_run_past_limit(run, specs[run.id], counts[run.id]),
            )
            merges = merging.for_queue(s, bh, runs, counts, specs, now)
            if self._admit(s, runs, counts, specs, now, merges):
                counts = survey.shard_counts(s)  # failed launches were settled
            bh.resolve(s, now)  # park or end the runs that failed a step
            steps = survey.merges(s) if merges is not None else {}  # as they are now
            rollup.roll_up_all(s, bh, runs, counts, steps, now)
            bh.resolve(s, now)
            self._signals += bh.signals
            s.flush()  # (as the commit would) so each spec is kept under its row's version
            self._specs.keep([r for r in bh.live(runs) if not RunState(r.state).terminal], specs)
            return [run.id for run in runs if RunState(run.state).terminal]

    def _parse(self, s: Session, runs: list[RunRow]) -> dict[str, RunSpec]:
        """Each run's spec, parsed once per version of its row. A run whose spec does
        not parse (any more) is ended: nothing can be done for it."""
        parsed, failed = self._specs.parse(s, runs)
        bulkhead.breaker(READING, len(runs), failed)
        for run_id, error in failed.items():
            self._bulkhead.fault(run_id, READING, error, final=True)
        return parsed

    def _focus(
        self,
        s: Session,
        runs: list[RunRow],
        specs: dict[str, RunSpec],
        now: datetime,
    ) -> list[RunRow]:
        """The runs whose shards this pass must look at: those with cancels or due
        deadlines -- or every run, every FULL_PASS_SECONDS. Exits need no more than the
        attempts they settle; roll-up and admission read the survey's counts."""
        if time.monotonic() - self._last_full >= FULL_PASS_SECONDS:
            self._last_full = time.monotonic()
            return runs
        grace = min(self.settings.kill_grace_seconds, self.settings.preemption_grace_seconds)
        return survey.needing_a_look(s, runs, specs, now, grace)

    def recover(self) -> None:
        """Re-adopt every attempt the store still shows as live. Attempts outlive the
        control plane (the local executor's supervisor records their exits durably), so
        after a restart, or a pass that failed midway, they are handed back to the executor,
        which reports them when they end -- or at once, with their true end times, if they
        ended meanwhile; one stored but never handed over (see launching.readopt) is launched
        again. Only an attempt the executor cannot account for at all is recorded as lost;
        none is ever started twice."""
        bh = self._bulkhead
        bh.begin()
        self._signals = []
        try:
            with self.sessions.begin() as s:
                unended = launching.open_attempts(s)
                run_ids = {attempt.run_id for attempt, _ in unended}
                rows = list(s.scalars(select(RunRow).where(RunRow.id.in_(run_ids))))
                specs = self._parse(s, rows)
                now = self.clock()
                full = self._specs.full
                whole = {run_id: full(s, run_id, spec) for run_id, spec in specs.items()}
                lost = launching.readopt(s, self.executor, unended, whole, self.cipher, now)
                self._collect(s, lost, specs)
                bh.resolve(s, now)
        except BaseException:
            self.executor.flush(discard=True)
            raise
        bh.commit()
        self.executor.flush()  # the relaunched attempts, as after a pass
        for handle, sig in [*self._signals, *bh.signals]:  # gangs restarting, runs ended
            self.executor.signal(handle, sig)

    # -- steps ---------------------------------------------------------------
    def _collect(self, s: Session, exits: Sequence[Exit], specs: dict[str, RunSpec]) -> None:
        """Settle the attempts in ``exits``; a run whose exits cannot be settled is ended.
        A gang that lost a member has its other live members stopped (SIGTERM once the
        pass committed): it is admitted again as one, never run short of a peer."""
        if not exits:
            return
        ceiling = self.settings.max_preemptions_per_index
        restarts: set[str] = set()
        unsettled = settle.settle(
            s,
            exits,
            specs.__getitem__,
            preemption_ceiling=ceiling,
            restarts=restarts,
            bill_preemptions=self.settings.bill_preemptions,
        )
        for run_id, (exc, left) in unsettled.items():
            self._bulkhead.fault(run_id, SETTLING, exc, final=True, exits=left)
        gangs = [s.get(RunRow, run_id) for run_id in sorted(restarts - set(unsettled))]
        now = self.clock()
        restart = functools.partial(deadlines.restart_gang, s, now=now)
        stops = self._bulkhead.each(s, [run for run in gangs if run], RESTARTING, restart)
        self._signals += [signal for signals in stops.values() for signal in signals]

    def _admit(
        self,
        s: Session,
        runs: list[RunRow],
        counts: dict[str, Counter[ShardState]],
        specs: dict[str, RunSpec],
        now: datetime,
        merges: dict[str, tuple[bool, str]] | None = None,
    ) -> bool:
        """Ask the queue policy what starts (and what is preempted) now, and do it; True
        when a launch failed (and was settled), which may have ended a run."""
        bh = self._bulkhead
        try:  # a shard started on a full log disk would lose its logs: start none
            self.log_disk.check()
        except StorageFull as exc:
            if self._disk_full != exc.message:
                log.error("not starting shards: %s", exc.message)
            self._disk_full = exc.message
            for run in bh.live(runs):
                if counts[run.id][ShardState.PENDING]:
                    run.message = f"waiting: {exc.message}"
            return False
        self._disk_full = None
        backing_off = survey.backing_off(s, now)
        decision = self._decide(s, runs, counts, backing_off, now, merges or {})
        victims = [victim.attempt_id for victim in decision.preempt]
        self._signals += deadlines.preempt(s, victims, now)  # sent after the commit
        for run in bh.live(runs):
            note = rollup.course_note(run)
            waiting = decision.waiting.get(run.id)
            left = counts[run.id][ShardState.PENDING] - decision.starts.get(run.id, 0)
            if left > 0 and not waiting:  # a run that waits says why, always
                waiting = f"waiting: {left} shard(s) not started yet"
                if run.id in backing_off:
                    waiting = f"{waiting} ({backing_off[run.id]} in retryBackoff)"
            message = "; ".join(m for m in (note, waiting) if m) or None
            position = decision.positions.get(run.id)
            if run.message != message or run.queue_position != position:  # else no flush
                run.message, run.queue_position = message, position
        starting = [run for run in bh.live(runs) if decision.starts.get(run.id)]
        whole = [  # runs that start every shard they have pending: read at once
            r.id
            for r in starting
            if r.id not in (merges or {}) and decision.starts[r.id] >= counts[r.id][PENDING]
        ]
        pending = launching.all_pending(s, whole, now)
        prepared: dict[str, list[str]] = {}  # launches queued by each run, not yet flushed
        rows = launching.LaunchRows()  # their attempts and shards: written together
        launched = bh.each(  # all under one savepoint; when one fails, one savepoint each
            s,
            starting,
            STARTING,
            lambda run: self._start(
                s,
                run,
                decision.starts[run.id],
                specs[run.id],
                now,
                merge=run.id in (merges or {}),
                pending=pending.get(run.id),
                prepared=prepared,
                rows=rows,
            ),
            undo=lambda ids: launching.undo_starts(self.executor, bh, prepared, ids),
            deferred=rows,
        )
        faulted = {run.id: bh.faults[run.id].error for run in starting if run.id in bh.faults}
        bulkhead.breaker(STARTING, len(starting), faulted)
        failed = [exit for exits in launched.values() for exit in exits]
        for run in starting:
            exits = launched.get(run.id)
            if exits:  # a run that waits says why
                could_not = f"{len(exits)} shard(s) could not start: {exits[0].reason}"
                run.message = "; ".join(m for m in (run.message, could_not) if m)
        self._collect(s, failed, specs)
        return bool(failed)

    def _decide(
        self,
        s: Session,
        runs: list[RunRow],
        counts: dict[str, Counter[ShardState]],
        backing_off: dict[str, int],
        now: datetime,
        merges: dict[str, tuple[bool, str]],
    ) -> queue.Decision:
        """The queue policy's decision (a run it fails on is parked, see bulkhead)."""
        capacity, ceiling = self.executor.capacity(), self.settings.max_preemptions_per_index
        return self._bulkhead.whole(
            runs,
            QUEUEING,
            lambda some: scheduling.decide(
                some,
                counts,
                capacity=capacity,
                preemptible=lambda: survey.preemptible(s, now),
                preemption_ceiling=ceiling,
                hold=self._bulkhead.faults.keys(),  # parked: their live shards still count
                restarting=lambda: survey.restarting_gangs(s),
                backing_off=backing_off,
                merges=merges,
            ),
        )

    def _start(
        self,
        s: Session,
        run: RunRow,
        n: int,
        spec: RunSpec,
        now: datetime,
        *,
        merge: bool,
        pending: list[ShardRecord] | None,
        prepared: dict[str, list[str]],
        rows: launching.LaunchRows,
    ) -> list[Exit]:
        """Start ``n`` of the run's pending shards (``merge``: its merge step; ``pending``:
        its pending shards if read already); the launches that failed. The launches it
        queued go into ``prepared`` (to drop them if its savepoint is rolled back), their
        rows into ``rows``."""
        # Ray: a placement group of n bundles. Until the reservation is ready the gang
        # run stays queued; it is asked again next pass.
        if run.gang and not merge and not self.executor.reserve_gang(run.id, n, run.machine):
            run.message = f"waiting for the executor to reserve {n} x {run.machine} at once"
            return []
        if run.state == RunState.QUEUED:
            transition(run, RunState.RUNNING, now)
        launch = launching.RunLaunch(s, run, self._specs.full(s, run.id, spec), self.cipher)
        try:
            logs, home = self.settings.logs_dir, self.settings.home
            prepared[run.id] = launch.launched
            failed = launch.start(
                self.executor, n, now, logs, home, merge=merge, pending=pending, into=rows
            )
        except PASS_LEVEL:
            raise
        except Exception:  # its savepoint is rolled back: so are its prepared launches
            self.executor.drop(prepared.pop(run.id))
            raise
        if launch.fault is not None:  # its shards' launches failed (and are settled)
            self._bulkhead.fault(run.id, STARTING, launch.fault)
        return failed
