"""The reconciler: a level-triggered loop that drives runs to their terminal state.

Each pass re-reads the store, asks the policies (admission, backoff, deadlines,
success) what should happen, acts through the executor and writes the result.
A pass is idempotent: running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..._errors import ExecutorError
from ..._settings import Settings
from ..._spec import RunSpec
from ..._states import RunState, ShardState
from ..executors.base import Executor, Exit, LaunchRequest, Mount
from ..store import AttemptRow, RunRow, ShardRow, VolumeRow
from ..transitions import transition
from . import admission, backoff, deadlines, success
from .indexes import compress

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
    ) -> None:
        self.sessions = sessions
        self.executor = executor
        self.settings = settings
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        executor.set_waker(self.wake)

    # -- loop -------------------------------------------------------------
    def wake(self) -> None:
        """Run the next pass now (after a submit, a cancel or a process exit)."""
        self._wake.set()

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="sylphx-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # keep reconciling; the next pass re-reads everything
                log.exception("reconcile pass failed")
            self._wake.wait(self.settings.reconcile_interval)

    # -- one pass ----------------------------------------------------------
    def tick(self) -> None:
        """One level-triggered pass over all active runs."""
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
            self._admit(s, runs, specs, now)
            for run in runs:
                self._roll_up(run, now)

    def recover(self) -> None:
        """On start: attempts this executor does not know were orphaned by a restart."""
        with self.sessions.begin() as s:
            orphans = s.scalars(select(AttemptRow).where(AttemptRow.ended_at.is_(None))).all()
            exits = [
                Exit(
                    handle=a.handle or f"attempt:{a.id}",
                    returncode=-9,
                    ended_at=self.clock(),
                    reason="Orphaned: the control plane restarted",
                )
                for a in orphans
                if not (a.handle and self.executor.alive(a.handle))
            ]
            for attempt in orphans:
                if attempt.handle is None:
                    attempt.handle = f"attempt:{attempt.id}"
                elif not self.executor.alive(attempt.handle):
                    self.executor.signal(attempt.handle, "kill")
            run_ids = {a.run_id for a in orphans}
            specs = {
                r.id: RunSpec.model_validate(r.spec)
                for r in s.scalars(select(RunRow).where(RunRow.id.in_(run_ids)))
            }
            self._collect(s, exits, specs)

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
            self._finish(attempt, by_handle[attempt.handle or ""], specs[attempt.run_id])

    def _finish(self, attempt: AttemptRow, exit: Exit, spec: RunSpec) -> None:
        shard = attempt.shard
        outcome = backoff.decide(
            exit.returncode,
            stop_reason=attempt.stop_reason,
            failures=shard.failures,
            budget=spec.retry_budget,
            reason=exit.reason,
            lost=exit.lost and not spec.gang,  # a lost gang shard is not retried alone
        )
        attempt.state = outcome.attempt_state.value
        attempt.exit_code = outcome.exit_code
        attempt.reason = outcome.reason
        attempt.ended_at = exit.ended_at
        shard.exit_code = outcome.exit_code
        shard.reason = outcome.reason
        if outcome.uses_budget:
            shard.failures += 1
        if ShardState(shard.state) is ShardState.STARTING:
            transition(shard, ShardState.RUNNING, exit.ended_at)
        transition(shard, outcome.shard_state, exit.ended_at)

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
                grace_seconds=self.settings.kill_grace_seconds,
                cancel_requested=run.cancel_requested_at is not None,
            )
            if action is None or attempt.handle is None:
                continue
            sig, reason = action
            self.executor.signal(attempt.handle, sig)
            if sig == "term":
                attempt.stop_reason, attempt.stop_requested_at = reason, now
            else:
                attempt.killed_at = now

    def _used(self, runs: list[RunRow]) -> admission.Resources:
        used = admission.ZERO
        for run in runs:
            live = sum(1 for shard in run.shards if shard.state in LIVE)
            if live:
                used = used + admission.Resources.of_tier(run.machine, live)
        return used

    def _admit(
        self, s: Session, runs: list[RunRow], specs: dict[str, RunSpec], now: datetime
    ) -> None:
        candidates = []
        for run in runs:
            if run.cancel_requested_at is not None:
                continue
            pending = sum(1 for shard in run.shards if shard.state == ShardState.PENDING)
            if pending:
                candidates.append(admission.Candidate(run.id, run.gang, run.machine, pending))
        if not candidates:
            return
        free = self.executor.capacity() - self._used(runs)
        decision = admission.admit(candidates, free)
        by_id = {run.id: run for run in runs}
        for cand in candidates:
            run = by_id[cand.run_id]
            run.message = decision.waiting.get(run.id)
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
                command=spec.command,
                env=spec.env,
                machine=spec.machine,
                stdout_path=stdout,
                stderr_path=stderr,
                working_dir=self._working_dir(run.id, spec),
                image=spec.image,
                mounts=self._mounts(s, spec),
            )
            attempt.handle = self.executor.launch(request)
        except (OSError, ExecutorError) as exc:
            s.flush()
            attempt.handle = f"attempt:{attempt.id}"
            stderr.parent.mkdir(parents=True, exist_ok=True)
            with open(stderr, "a") as fh:
                fh.write(f"sylphx: could not start the shard: {exc}\n")
            self._finish(
                attempt, Exit(attempt.handle, 127, self.clock(), reason=f"LaunchError: {exc}"), spec
            )
            return
        attempt.state = ShardState.RUNNING.value
        transition(shard, ShardState.RUNNING, now)

    def _working_dir(self, run_id: str, spec: RunSpec) -> Path:
        if spec.working_dir is not None:
            return Path(spec.working_dir)
        path = self.settings.home / "work" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

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
        if run.state == RunState.QUEUED and final is not RunState.CANCELLED:
            transition(run, RunState.RUNNING, now)
        transition(run, final, now)
        run.ended_at = max((s.ended_at for s in run.shards if s.ended_at), default=now)
        run.message = _summary(run, counts)


def _summary(run: RunRow, counts: Counter[ShardState]) -> str | None:
    bad = [s.index for s in run.shards if s.state != ShardState.SUCCEEDED]
    if not bad:
        return None
    parts = []
    for state in (ShardState.FAILED, ShardState.TIMED_OUT, ShardState.CANCELLED):
        idx = [s.index for s in run.shards if s.state == state]
        if idx:
            parts.append(f"{state.value}: {compress(idx)}")
    return f"{counts[ShardState.SUCCEEDED]}/{len(run.shards)} succeeded; " + "; ".join(parts)
