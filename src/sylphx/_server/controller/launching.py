"""Starting a run's pending shards: their attempts, log files and executor requests.

The parts every shard of a run shares (volumes resolved to host paths, granted secrets
decrypted) are worked out once per run and pass, not once per shard. The shards are
read and written as plain records (:mod:`..store.records`): a pass that starts 256
shards sends one INSERT of attempts and one UPDATE of shards, each an executemany.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import bindparam, insert, or_, select
from sqlalchemy.orm import Session

from sylphx._core.errors import ExecutorError
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.spec import RunSpec
from sylphx._core.states import AttemptState, ShardState
from sylphx._server.executors.base import LOST, Executor, Exit, LaunchRequest, Mount
from sylphx._server.infra import faults
from sylphx._server.store import RunRow, VolumeRow
from sylphx._server.store.batch import Batch
from sylphx._server.store.records import (
    ATTEMPT_COLUMNS,
    ATTEMPTS,
    SHARDS,
    AttemptRecord,
    ShardRecord,
    attempt_columns,
    shard_columns,
    update_attempts,
    update_shards,
)
from sylphx._server.tenancy import secrets

from . import merging, telemetry
from .bulkhead import PASS_LEVEL, Bulkhead
from .transitions import transition

_PENDING = (  # a run's first pending shards whose retryBackoff is over (built once)
    select(*shard_columns())
    .where(
        SHARDS.c.run_id == bindparam("run_id"),
        SHARDS.c.state == ShardState.PENDING.value,
        or_(SHARDS.c.not_before.is_(None), SHARDS.c.not_before <= bindparam("now")),
        SHARDS.c.index >= 0,  # the merge step starts on its own (see merging)
    )
    .order_by(SHARDS.c.index)
    .limit(bindparam("n"))
)
_ALL_PENDING = (  # every pending shard, backoff over, of some runs (built once)
    select(*shard_columns())
    .where(
        SHARDS.c.run_id.in_(bindparam("run_ids", expanding=True)),
        SHARDS.c.state == ShardState.PENDING.value,
        or_(SHARDS.c.not_before.is_(None), SHARDS.c.not_before <= bindparam("now")),
        SHARDS.c.index >= 0,
    )
    .order_by(SHARDS.c.run_id, SHARDS.c.index)
)
CHUNK = 500  # runs per query (bound parameters stay far below every backend's limit)
_MERGE_STEP = select(*shard_columns()).where(
    SHARDS.c.run_id == bindparam("run_id"),
    SHARDS.c.state == ShardState.PENDING.value,
    SHARDS.c.index == MERGE_INDEX,
)
STARTING = AttemptState.STARTING
# The most a local attempt's process may start after its launch (a supervisor claims its
# attempts within 10 s or they are lost; a big batch's last spawn comes seconds later).
SPAWN_SLACK = timedelta(seconds=60)
_INSERT_ATTEMPTS = Batch(
    insert(ATTEMPTS),
    ("shard_id", "run_id", "number", "state", "handle", "stdout_path", "stderr_path", "started_at"),
)


def all_pending(s: Session, run_ids: list[str], now: datetime) -> dict[str, list[ShardRecord]]:
    """The pending shards (retryBackoff over) of runs that start all of them this pass, read
    at once: a pass that starts 50 single-shard runs reads their shards in one query."""
    out: dict[str, list[ShardRecord]] = {run_id: [] for run_id in run_ids}
    for first in range(0, len(run_ids), CHUNK):
        ids = run_ids[first : first + CHUNK]
        for row in s.execute(_ALL_PENDING, {"run_ids": ids, "now": now}):
            out[row.run_id].append(ShardRecord(*row))
    return out


def attempt_log_paths(logs_dir: Path, run_id: str, index: int, attempt: int) -> tuple[str, str]:
    """Where an attempt's stdout and stderr go: ``logs/RUN/shard-I.attempt-N.stdout``, one
    folder per run (a folder per shard would be one more mkdir per launch). Readers use
    the paths stored on the attempt, so older layouts stay readable. Plain strings: a pass
    builds two per shard, and a ``Path`` costs more than the rest of the shard's launch."""
    name = "merge" if index == MERGE_INDEX else f"shard-{index}"
    base = f"{logs_dir}/{run_id}/{name}.attempt-{attempt}"
    return f"{base}.stdout", f"{base}.stderr"


class LaunchRows:
    """The rows of the launches of a pass's runs (attempts to insert, shards to update),
    written together (see :meth:`.Bulkhead.each`): two statements for all the runs the
    pass starts, not two a run. Once discarded (their savepoint rolled back), it queues
    no more: each run, started again under its own savepoint, writes its own rows, so a
    failed write is that run's (its queued launches dropped with it)."""

    def __init__(self, *, queueing: bool = True) -> None:
        self.attempts: list[dict[str, object]] = []
        self.shards: list[ShardRecord] = []
        self.queueing = queueing

    def add(self, s: Session, attempts: list[dict[str, object]], shards: list[ShardRecord]) -> None:
        """Queue one run's rows (or write them now, once discarded)."""
        self.attempts += attempts
        self.shards += shards
        if not self.queueing:
            self.write(s)

    def write(self, s: Session) -> None:
        """Insert the attempts and update their shards (compare-and-set), then forget them."""
        attempts, shards, self.attempts, self.shards = self.attempts, self.shards, [], []
        if attempts:  # (forgotten even if this fails: their savepoint is rolled back)
            _INSERT_ATTEMPTS.execute(s.connection(), attempts)
            update_shards(s, shards, ("state", "attempts", "started_at"))

    def discard(self) -> None:
        """Forget the rows queued so far; queue no more."""
        self.attempts, self.shards, self.queueing = [], [], False


class RunLaunch:
    """Builds the :class:`LaunchRequest` of each shard of one run."""

    def __init__(self, s: Session, run: RunRow, spec: RunSpec, cipher: Fernet | None) -> None:
        self._s, self._run, self._spec, self._cipher = s, run, spec, cipher
        self._shared: tuple[list[Mount], dict[str, str]] | Exception | None = None
        self.fault: Exception | None = None  # the first error that was not the shard's
        self.launched: list[str] = []  # handles the executor accepted

    def _parts(self) -> tuple[list[Mount], dict[str, str]]:
        if self._shared is None:
            try:
                self._shared = (self._mounts(), self._secrets())
            except PASS_LEVEL:
                raise
            except Exception as exc:
                self._shared = exc
        if isinstance(self._shared, Exception):
            raise self._shared  # every shard of the run fails to start with the same reason
        return self._shared

    def _mounts(self) -> list[Mount]:
        mounts = []
        for vm in self._spec.volume_mounts:
            volume = self._s.get(VolumeRow, vm.volume_id)
            if volume is None:
                raise ExecutorError(f"volume {vm.volume_id} no longer exists")
            mounts.append(Mount(Path(volume.path), vm.mount_path))
        return mounts

    def _secrets(self) -> dict[str, str]:
        if self._cipher is None:
            return {}
        return secrets.reveal(self._s, self._run.org_id, self._spec.secrets, self._cipher)

    def request(self, index: int, attempt: int, stdout: str, stderr: str) -> LaunchRequest:
        """Shard ``index``'s attempt number ``attempt`` (the merge step's, fed its
        manifest, for MERGE_INDEX); raises ExecutorError."""
        mounts, granted = self._parts()
        spec = self._spec.for_index(index)
        manifest = merging.manifest(self._s, self._run) if index == MERGE_INDEX else None
        return LaunchRequest(
            run_id=self._run.id,
            index=index,
            attempt=attempt,
            count=spec.parallelism,
            indexed=spec.indexed,
            command=spec.command or [],
            env=spec.env,
            machine=spec.machine,
            stdout_path=stdout,
            stderr_path=stderr,
            working_dir=Path(spec.working_dir) if spec.working_dir else None,
            image=spec.image,
            image_digest=(self._run.image_digests or {}).get(spec.image or ""),
            mounts=mounts,
            network=spec.network,
            secrets=granted,
            manifest=manifest,
        )

    def start(
        self,
        executor: Executor,
        n: int,
        now: datetime,
        logs_dir: Path,
        home: Path,
        *,
        merge: bool = False,
        pending: list[ShardRecord] | None = None,
        into: LaunchRows | None = None,
    ) -> list[Exit]:
        """Start the run's first ``n`` pending shards (each a new attempt), or with
        ``merge`` its merge step, through ``executor``: prepared now, stored with their
        handles (now, or queued in ``into``), started by the executor's flush once the
        pass committed (docs/adr/0004).
        Returns the launches that failed (exit 127, LaunchError) for the caller to settle.
        A full disk raises StorageFull: not the shards' fault. Any other error (a bug, a
        bad value) fails that shard's launch too, and is kept in :attr:`fault`: the caller
        parks or ends the run, the pass goes on."""
        if merge:  # the run's merge step (its shards have all ended)
            rows = self._s.execute(_MERGE_STEP, {"run_id": self._run.id}).all()
            shards = [ShardRecord(*row) for row in rows]
        elif pending is not None:  # read already (see all_pending): its first n
            shards = [replace(shard) for shard in pending[:n]]  # fresh: it may be redone
        else:
            rows = self._s.execute(_PENDING, {"run_id": self._run.id, "n": n, "now": now}).all()
            shards = [ShardRecord(*row) for row in rows]
        attempts: list[dict[str, object]] = []
        failed: list[Exit] = []
        for shard in shards:
            transition(shard, ShardState.STARTING, now)
            shard.attempts += 1
            stdout, stderr = attempt_log_paths(logs_dir, self._run.id, shard.index, shard.attempts)
            try:
                request = self.request(shard.index, shard.attempts, stdout, stderr)
                handle = executor.launch(request)
            except PASS_LEVEL:
                raise
            except Exception as exc:
                if isinstance(exc, OSError) and faults.is_disk_full(exc):
                    raise faults.disk_full(home, "state") from exc  # roll back, retry
                why = str(exc)
                if not isinstance(exc, OSError | ExecutorError):
                    self.fault = self.fault or exc
                    why = f"internal error: {type(exc).__name__}: {exc}"
                handle = f"unstarted:{self._run.id}/{shard.index}.{shard.attempts}"
                _note(logs_dir, stderr, f"sylphx: could not start the shard: {why}\n")
                failed.append(Exit.unlaunched(handle, now, why))
            else:
                self.launched.append(handle)
                if not executor.reports_starts:  # else running once the executor says so
                    transition(shard, ShardState.RUNNING, now)
                    if not merge:
                        telemetry.started(self._s, self._run.id, now)
            running = shard.state == ShardState.RUNNING
            attempts.append(
                {
                    "shard_id": shard.id,
                    "run_id": self._run.id,
                    "number": shard.attempts,
                    "state": str(AttemptState.RUNNING if running else STARTING),
                    "handle": handle,
                    "stdout_path": stdout,
                    "stderr_path": stderr,
                    "started_at": now if running else None,  # else when it starts, if ever
                }
            )
        (into if into is not None else LaunchRows(queueing=False)).add(self._s, attempts, shards)
        return failed


_UNENDED_OF = (  # attempts not ended among some handles, with their shards
    select(*attempt_columns(), *shard_columns())
    .join_from(ATTEMPTS, SHARDS, ATTEMPTS.c.shard_id == SHARDS.c.id)
    .where(
        ATTEMPTS.c.handle.in_(bindparam("handles", expanding=True)),
        ATTEMPTS.c.ended_at.is_(None),
        ATTEMPTS.c.state.in_([AttemptState.STARTING.value, AttemptState.RUNNING.value]),
    )
)


def mark_started(s: Session, starts: Sequence[tuple[str, datetime]], now: datetime) -> None:
    """The attempts whose process started (as their executor reported): ``running`` from
    then, with their shards. One running already (the local executor's, from its launch)
    takes the true start: its timeout counts from it, as its bill does. That only ever
    moves its start later, by SPAWN_SLACK at most and never past ``now`` (a record
    an unsandboxed shard could reach buys it no more). One that ended meanwhile, or is
    unknown, is left alone."""
    if not starts:
        return
    when = dict(starts)
    n = len(ATTEMPT_COLUMNS)
    attempts: list[AttemptRecord] = []
    shards: list[ShardRecord] = []
    for row in s.execute(_UNENDED_OF, {"handles": list(when)}):
        attempt, shard = AttemptRecord(*row[:n]), ShardRecord(*row[n:])
        at = when[attempt.handle or ""]
        if attempt.state == AttemptState.RUNNING:
            if attempt.started_at is not None:
                at = min(at, now, attempt.started_at + SPAWN_SLACK)
                if at > attempt.started_at:
                    attempt.started_at = at
                    attempts.append(attempt)
            continue
        attempt.started_at = at
        transition(attempt, AttemptState.RUNNING, at)
        transition(shard, ShardState.RUNNING, at)
        if shard.index >= 0:
            telemetry.started(s, shard.run_id, at)
        attempts.append(attempt)
        shards.append(shard)
    update_attempts(s, attempts, ("state", "started_at"))
    update_shards(s, shards, ("state",))


_OPEN = (  # every attempt the store shows as live, with its shard's index
    select(*attempt_columns(), SHARDS.c.index)
    .join_from(ATTEMPTS, SHARDS, ATTEMPTS.c.shard_id == SHARDS.c.id)
    .where(ATTEMPTS.c.ended_at.is_(None))
    .order_by(ATTEMPTS.c.id)
)


def open_attempts(s: Session) -> list[tuple[AttemptRecord, int]]:
    """Every attempt not yet ended, with its shard's index."""
    n = len(ATTEMPT_COLUMNS)
    return [(AttemptRecord(*row[:n]), row[n]) for row in s.execute(_OPEN)]


def readopt(
    s: Session,
    executor: Executor,
    attempts: Sequence[tuple[AttemptRecord, int]],
    specs: dict[str, RunSpec],
    cipher: Fernet | None,
    now: datetime,
) -> list[Exit]:
    """Hand the open ``attempts`` (each with its shard's index) back to ``executor``
    (after a restart, or a failed pass); returns the exits to record: the attempts it
    cannot account for (lost), and those it could not launch again. An attempt its pass
    stored but that was never handed over (the control plane died between the commit and
    the act) is launched again, from the store: no secret waited on disk. Launches are
    idempotent per attempt, so one that did start meanwhile is adopted, never started
    twice. They start at the next flush."""
    exits: list[Exit] = []
    launches: dict[str, RunLaunch] = {}
    named = []  # attempts stored before handles were (migration 0007): named by id now
    for attempt, index in attempts:
        if attempt.handle is None:
            attempt.handle = f"attempt:{attempt.id}"
            named.append(attempt)
        handle = attempt.handle
        if not executor.adopt(handle):
            why = f"{LOST}: the control plane restarted and cannot find the attempt"
            exits.append(Exit(handle, -9, now, reason=why, lost=True))
            continue
        spec = specs.get(attempt.run_id)  # none: the run is ended (its spec is unreadable)
        if attempt.stop_reason or spec is None or executor.started(handle):
            continue
        run = s.get(RunRow, attempt.run_id)
        if run is None:
            continue
        launch = launches.get(run.id)
        if launch is None:
            launch = launches[run.id] = RunLaunch(s, run, spec, cipher)
        out, err = attempt.stdout_path or "", attempt.stderr_path or ""
        try:
            executor.launch(launch.request(index, attempt.number, out, err))
        except PASS_LEVEL:
            raise
        except Exception as exc:  # as when a pass's launch fails (without the strike)
            why = str(exc) if isinstance(exc, OSError | ExecutorError) else repr(exc)
            with contextlib.suppress(OSError), open(err, "a") as fh:
                fh.write(f"sylphx: could not start the shard: {why}\n")
            exits.append(Exit.unlaunched(handle, now, why))
    update_attempts(s, named, ("handle",))
    return exits


def _note(logs_dir: Path, stderr: str, text: str) -> None:
    """Say in the attempt's stderr why it never started (the reason is also stored on
    the attempt). A full log disk fails the pass: no shard starts until there is room."""
    try:
        Path(stderr).parent.mkdir(parents=True, exist_ok=True)
        with open(stderr, "a") as fh:
            fh.write(text)
    except OSError as exc:
        if faults.is_disk_full(exc):
            raise faults.disk_full(logs_dir, "log") from exc
        raise


def undo_starts(
    executor: Executor, bh: Bulkhead, prepared: dict[str, list[str]], run_ids: Sequence[str]
) -> None:
    """The starts of ``run_ids`` were rolled back with their savepoint: drop the launches
    they queued (never a process without its row) and forget the faults they noted (a run
    is started again under its own savepoint, or fails the step with that error)."""
    executor.drop([handle for run_id in run_ids for handle in prepared.pop(run_id, [])])
    for run_id in run_ids:  # none had a fault before this step (they were live)
        bh.faults.pop(run_id, None)
