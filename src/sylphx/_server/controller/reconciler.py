"""The reconciler: a level-triggered loop that drives runs to their terminal state.

Each pass re-reads the store, asks the policies (admission, backoff, deadlines,
success) what should happen, acts through the executor and writes the result.
A pass is idempotent: running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import Engine, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..._errors import ExecutorError, StorageFull
from ..._settings import Settings
from ..._spec import RunSpec
from ..._states import RUN_TRANSITIONS, RunState, ShardState
from .. import billing, faults, secrets
from ..executors.base import Executor, Exit, LaunchRequest, Mount, Signal
from ..lease import Lease
from ..store import AttemptRow, RunRow, ShardRow, VolumeRow
from ..transitions import transition
from . import backoff, deadlines, scheduling, success

log = logging.getLogger("sylphx.reconciler")
Clock = Callable[[], datetime]
ACTIVE = (RunState.QUEUED.value, RunState.RUNNING.value)
LIVE = (ShardState.STARTING.value, ShardState.RUNNING.value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def attempt_log_paths(logs_dir: Path, run_id: str, index: int, attempt: int) -> tuple[Path, Path]:
    base = logs_dir / run_id / str(index)
    return base / f"attempt-{attempt}.stdout", base / f"attempt-{attempt}.stderr"


class Reconciler:
    """Drives every active run one step closer to done on each :meth:`tick`."""

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
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signals: list[tuple[str, Signal]] = []  # decided by this pass, sent after it
        self._recovered = False  # whether start() already re-adopted live attempts
        self._disk_full: str | None = None  # the last "log disk full" message logged
        executor.set_waker(self.wake)

    # -- loop -------------------------------------------------------------
    def wake(self) -> None:
        """Run the next pass now (after a submit, a cancel or a process exit)."""
        self._wake.set()

    def start(self) -> None:
        if self.lease is None or self.lease.ensure():
            self.recover()
            self._recovered = True
        self._thread = threading.Thread(target=self._loop, name="sylphx-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lease is not None:
            self.lease.release()

    def _loop(self) -> None:
        readopt = not self._recovered
        while not self._stop.is_set():
            self._wake.clear()
            try:
                # Several API processes may share the store: only the lease holder acts.
                # A standby that takes over re-adopts every live attempt first.
                if self.lease is not None and not self.lease.ensure():
                    readopt = True
                    self._wake.wait(self.settings.reconcile_interval)
                    continue
                if readopt:  # exits polled by a failed pass were lost with its transaction
                    self.recover()
                    readopt = False
                self.tick()
            except (OperationalError, InterfaceError) as exc:  # the store is away: say so
                bind = self.sessions.kw["bind"]
                assert isinstance(bind, Engine)
                log.error("reconcile pass failed: %s", faults.store_unavailable(exc, bind).message)
                readopt = True
            except StorageFull as exc:
                log.error("reconcile pass failed: %s", exc.message)
                readopt = True
            except Exception:  # keep reconciling; the next pass re-reads everything
                log.exception("reconcile pass failed")
                readopt = True
            self._wake.wait(self.settings.reconcile_interval)

    # -- one pass ----------------------------------------------------------
    def tick(self) -> None:
        """One level-triggered pass over all active runs."""
        self._signals = []
        try:
            self._pass()
        except BaseException:
            self.executor.flush(discard=True)  # never start what a rolled-back pass launched
            raise
        # Signals go out only after the pass committed why (timeout/cancel): a pass rolled
        # back by a concurrent write must not leave a shard killed for no recorded reason.
        for handle, sig in self._signals:
            self.executor.signal(handle, sig)

    def _pass(self) -> None:
        with self.sessions.begin() as s:
            runs = list(
                s.scalars(
                    select(RunRow)
                    .where(RunRow.state.in_(ACTIVE))
                    .order_by(RunRow.created_at, RunRow.id)
                    .options(selectinload(RunRow.shards).selectinload(ShardRow.history))
                )
            )
            specs = {run.id: RunSpec.model_validate(run.spec) for run in runs}
            self._collect(s, self.executor.poll(), specs)
            now = self.clock()
            for run in runs:
                self._stop_live(run, specs[run.id], now)
                if run.cancel_requested_at is not None:
                    for shard in run.shards:
                        if shard.state == ShardState.PENDING:
                            transition(shard, ShardState.CANCELLED, now)
                            shard.reason = "Cancelled before it started"
            for run in runs:
                specs[run.id] = scheduling.expire_admission(run, specs[run.id], now)
            self._admit(s, runs, specs, now)
            for run in runs:
                self._roll_up(run, now)

    def recover(self) -> None:
        """Re-adopt every attempt the store still shows as live.

        Attempts outlive the control plane (the local executor's supervisor records
        their exits durably), so after a restart, or a pass that failed midway, they are
        handed back to the executor, which reports them when they end -- or at once, with
        their true end times, if they ended meanwhile. Only an attempt the executor
        cannot account for at all is recorded as lost; none is ever started twice.
        """
        with self.sessions.begin() as s:
            unended = s.scalars(select(AttemptRow).where(AttemptRow.ended_at.is_(None))).all()
            lost = []
            for attempt in unended:
                if attempt.handle is None:
                    attempt.handle = f"attempt:{attempt.id}"
                if not self.executor.adopt(attempt.handle):
                    reason = "Lost: the control plane restarted and cannot find the attempt"
                    lost.append(Exit(attempt.handle, -9, self.clock(), reason=reason))
            run_ids = {a.run_id for a in unended}
            specs = {
                r.id: RunSpec.model_validate(r.spec)
                for r in s.scalars(select(RunRow).where(RunRow.id.in_(run_ids)))
            }
            self._collect(s, lost, specs)

    # -- steps ---------------------------------------------------------------
    def _collect(self, s: Session, exits: Sequence[Exit], specs: dict[str, RunSpec]) -> None:
        if not exits:
            return
        by_handle = {e.handle: e for e in exits}
        attempts = s.scalars(
            select(AttemptRow)
            .where(AttemptRow.handle.in_(list(by_handle)), AttemptRow.ended_at.is_(None))
            .options(selectinload(AttemptRow.shard))
        ).all()
        for attempt in attempts:
            self._finish(s, attempt, by_handle[attempt.handle or ""], specs[attempt.run_id])

    def _finish(self, s: Session, attempt: AttemptRow, exit: Exit, spec: RunSpec) -> None:
        """Settle an ended attempt: its outcome, its shard's next state, its usage."""
        shard = attempt.shard
        outcome = backoff.decide(
            exit.returncode,
            stop_reason=attempt.stop_reason,
            failures=shard.failures,
            budget=spec.retry_budget,
            reason=exit.reason,
            lost=exit.lost and not spec.gang,  # a lost gang shard is not retried alone
            preemptions=shard.preemptions,
            preemption_ceiling=self.settings.max_preemptions_per_index,
        )
        attempt.state = outcome.attempt_state.value
        attempt.exit_code = outcome.exit_code
        attempt.reason = outcome.reason
        attempt.ended_at = exit.ended_at
        if exit.started_at is not None:  # the supervisor's record beats our launch time
            attempt.started_at = exit.started_at
        shard.exit_code = outcome.exit_code
        shard.reason = outcome.reason
        if outcome.uses_budget:
            shard.failures += 1
        if outcome.preempted:
            shard.preemptions += 1
        if ShardState(shard.state) is ShardState.STARTING:
            transition(shard, ShardState.RUNNING, exit.ended_at)
        transition(shard, outcome.shard_state, exit.ended_at)
        launched = not (exit.reason or "").startswith("LaunchError")
        billing.record(s, attempt, shard.run, ran=launched)  # one usage row per attempt

    def _stop_live(self, run: RunRow, spec: RunSpec, now: datetime) -> None:
        for shard in run.shards:
            if shard.state != ShardState.RUNNING or not shard.history:
                continue
            attempt = shard.history[-1]
            if attempt.ended_at is not None or attempt.started_at is None:
                continue
            action = deadlines.next_action(
                deadlines.LiveAttempt(
                    attempt.started_at,
                    attempt.stop_reason,
                    attempt.stop_requested_at,
                    attempt.killed_at,
                ),
                now=now,
                timeout_seconds=spec.timeout_seconds,
                grace_seconds=(
                    self.settings.preemption_grace_seconds
                    if attempt.stop_reason == "preempt"
                    else self.settings.kill_grace_seconds
                ),
                cancel_requested=run.cancel_requested_at is not None,
            )
            if action is None or attempt.handle is None:
                continue
            sig, reason = action
            self._signals.append((attempt.handle, sig))  # sent once the reason is stored
            if sig == "term":
                attempt.stop_reason, attempt.stop_requested_at = reason, now
            else:
                attempt.killed_at = now

    def _admit(
        self, s: Session, runs: list[RunRow], specs: dict[str, RunSpec], now: datetime
    ) -> None:
        """Ask the queue policy what starts (and what is preempted) now, and do it."""
        try:  # a shard started on a full log disk would lose its logs: start none
            faults.check_disk(self.settings.logs_dir, "log")
        except StorageFull as exc:
            if self._disk_full != exc.message:
                log.error("not starting shards: %s", exc.message)
            self._disk_full = exc.message
            for run in runs:
                if any(shard.state == ShardState.PENDING for shard in run.shards):
                    run.message = f"waiting: {exc.message}"
            return
        self._disk_full = None
        decision = scheduling.decide(
            runs,
            capacity=self.executor.capacity(),
            now=now,
            preemption_ceiling=self.settings.max_preemptions_per_index,
        )
        victims = {v.attempt_id for v in decision.preempt}
        for run in runs:
            note = _course_note(run)
            waiting = decision.waiting.get(run.id)
            run.message = "; ".join(m for m in (note, waiting) if m) or None
            run.queue_position = decision.positions.get(run.id)
            for shard in run.shards:
                attempt = shard.history[-1] if shard.history else None
                if attempt is not None and attempt.id in victims and attempt.handle:
                    self._signals.append((attempt.handle, "term"))  # after the commit
                    attempt.stop_reason, attempt.stop_requested_at = "preempt", now
            n = decision.starts.get(run.id, 0)
            if not n:
                continue
            # Optional executor hook (Ray: a placement group of n bundles). Until the
            # reservation is ready the gang run stays queued; it is asked again next pass.
            reserve = getattr(self.executor, "reserve_gang", None)
            if run.gang and reserve is not None and not reserve(run.id, n, run.machine):
                run.message = f"waiting for the executor to reserve {n} x {run.machine} at once"
                continue
            if run.state == RunState.QUEUED:
                transition(run, RunState.RUNNING, now)
            to_start = [shard for shard in run.shards if shard.state == ShardState.PENDING][:n]
            for shard in to_start:
                self._launch(s, run, specs[run.id], shard, now)
        self.executor.flush()  # the local executor starts the whole pass as one batch

    def _launch(
        self, s: Session, run: RunRow, spec: RunSpec, shard: ShardRow, now: datetime
    ) -> None:
        transition(shard, ShardState.STARTING, now)
        shard.attempts += 1
        stdout, stderr = attempt_log_paths(
            self.settings.logs_dir, run.id, shard.index, shard.attempts
        )
        attempt = AttemptRow(
            run_id=run.id,
            number=shard.attempts,
            state=ShardState.STARTING.value,
            stdout_path=str(stdout),
            stderr_path=str(stderr),
            started_at=now,
        )
        shard.history.append(attempt)
        try:
            request = LaunchRequest(
                run_id=run.id,
                index=shard.index,
                attempt=shard.attempts,
                count=spec.parallelism,
                indexed=spec.indexed,
                command=spec.command or [],
                env=spec.env,
                machine=spec.machine,
                stdout_path=stdout,
                stderr_path=stderr,
                working_dir=Path(spec.working_dir) if spec.working_dir else None,
                image=spec.image,
                mounts=self._mounts(s, spec),
                network=spec.network,
                secrets=(
                    secrets.reveal(s, run.org_id, spec.secrets, self.cipher)
                    if self.cipher is not None
                    else {}
                ),
            )
            attempt.handle = self.executor.launch(request)
        except (OSError, ExecutorError) as exc:
            if isinstance(exc, OSError) and faults.is_disk_full(exc):  # not the shard's fault:
                raise faults.disk_full(self.settings.home, "state") from exc  # roll back, retry
            s.flush()
            attempt.handle = f"attempt:{attempt.id}"
            stderr.parent.mkdir(parents=True, exist_ok=True)
            with open(stderr, "a") as fh:
                fh.write(f"sylphx: could not start the shard: {exc}\n")
            failed = Exit(attempt.handle, 127, self.clock(), reason=f"LaunchError: {exc}")
            self._finish(s, attempt, failed, spec)
            return
        attempt.state = ShardState.RUNNING.value
        transition(shard, ShardState.RUNNING, now)

    def _mounts(self, s: Session, spec: RunSpec) -> list[Mount]:
        mounts = []
        for vm in spec.volume_mounts:
            volume = s.get(VolumeRow, vm.volume_id)
            if volume is None:
                raise ExecutorError(f"volume {vm.volume_id} no longer exists")
            mounts.append(Mount(Path(volume.path), vm.mount_path))
        return mounts

    def _roll_up(self, run: RunRow, now: datetime) -> None:
        counts = success.count_states(shard.state for shard in run.shards)
        final = success.final_status(counts, cancel_requested=run.cancel_requested_at is not None)
        if final is None:
            return
        if run.state == RunState.QUEUED and final not in RUN_TRANSITIONS[RunState.QUEUED]:
            transition(run, RunState.RUNNING, now)
        transition(run, final, now)
        run.ended_at = max((s.ended_at for s in run.shards if s.ended_at), default=now)
        note = _course_note(run)
        run.message = "; ".join(m for m in (note, success.summary(run.shards, counts)) if m) or None
        run.queue_position = None


def _course_note(run: RunRow) -> str | None:
    """The part of the message that explains the run's course (kept until it ends)."""
    if run.message and run.message.startswith("AdmissionTimeout"):
        return run.message.split("; ")[0]
    return None
