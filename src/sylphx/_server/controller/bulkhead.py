"""Bulkheads: a failure that concerns one run ends or parks that run, never the pass.

A pass is one transaction over every active run. A step that works run by run does so
under a SAVEPOINT (:meth:`Bulkhead.each`): all the runs under one, and only when that
fails, once more with one savepoint per run -- so a pass with nothing wrong pays two
statements a step, and a failing run is found exactly. The run whose step raised is

* ended at once (failed; its open attempts closed, their processes killed) when trying
  again cannot help: its spec does not parse, or one of its exits could not be settled
  (an executor reports an exit once: the next pass would have nothing to settle);
* otherwise parked: its message says why, and it is tried again next pass. A run whose
  same step fails ``STRIKES`` passes in a row is ended the same way: an error that
  repeats every pass (about twice a second) is not going away.

Neither is a run's doing when every run of a step fails (two or more): that is the
control plane's own bug, so the pass fails as a whole, as does an error of the store or
the host (:data:`PASS_LEVEL`); the pass is rolled back and tried again, no run ended.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

import pydantic
from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from sylphx._core.errors import StorageFull
from sylphx._core.states import AttemptState, RunState, ShardState
from sylphx._server.controller.policy.backoff import normalize_exit
from sylphx._server.executors.base import Exit, Signal
from sylphx._server.store import RunRow
from sylphx._server.store.records import (
    ATTEMPTS,
    SHARDS,
    AttemptRecord,
    ShardRecord,
    attempt_columns,
    shard_columns,
    update_attempts,
    update_shards,
)
from sylphx._server.tenancy import billing

from . import telemetry
from .transitions import transition

log = logging.getLogger("sylphx.reconciler")
T = TypeVar("T")

# Not a run's fault: the store is away, a concurrent writer won, a disk is full.
PASS_LEVEL: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    StaleDataError,
    StorageFull,
)
# ... nor, outside a savepoint (a read), a failed statement: on PostgreSQL the whole
# transaction is lost with it.
NOT_A_RUNS: tuple[type[BaseException], ...] = (*PASS_LEVEL, DBAPIError)
MAX_SAY = 400  # characters of an error's text in a run's message
STRIKES = 3  # passes in a row a run's step may fail before the run is ended
STOPPED = "the run was stopped so other runs go on"


@dataclass
class Fault:
    """Why one run could not go through a step of this pass."""

    step: str  # what the pass was doing for the run, e.g. "starting its shards"
    error: Exception
    final: bool = False  # trying again cannot help: end the run now
    exits: list[Exit] = field(default_factory=list)  # its exits this pass could not settle

    def text(self) -> str:
        return f"Internal error while {self.step}: {type(self.error).__name__}: {_say(self.error)}"


def _say(error: Exception) -> str:
    """The error on one line, short enough for a run's message."""
    if isinstance(error, pydantic.ValidationError):
        text = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in error.errors()
        )
    else:
        text = " ".join(str(error).split())
    return text if len(text) <= MAX_SAY else text[: MAX_SAY - 3] + "..."


def breaker(step: str, total: int, failed: Mapping[str, Exception]) -> None:
    """Raise (fail the pass) when every one of two or more runs failed ``step``."""
    if total >= 2 and len(failed) == total:
        log.error("every run failed while %s: failing the pass instead", step)
        raise next(iter(failed.values()))


class Bulkhead:
    """The faults of the current pass, and each run's strikes across passes."""

    def __init__(self) -> None:
        self._strikes: dict[str, tuple[str, int]] = {}  # run id -> (step, passes in a row)
        self.begin()

    def begin(self) -> None:
        """Start a pass (or a recovery): no faults yet."""
        self.faults: dict[str, Fault] = {}
        self.notes: dict[str, str] = {}  # run id -> why it was parked this pass
        self.signals: list[tuple[str, Signal]] = []  # kills of ended runs, sent after commit
        self._next = dict(self._strikes)  # kept only if the pass commits
        self._resolved: set[str] = set()

    def commit(self, ended: Iterable[str] = ()) -> None:
        """The pass committed: its strikes count; the runs it ended are forgotten."""
        self._strikes = self._next
        for run_id in ended:
            self._strikes.pop(run_id, None)

    def live(self, runs: Iterable[RunRow]) -> list[RunRow]:
        """``runs`` but those that failed a step of this pass."""
        if not self.faults:  # (most passes: no run's id need be read)
            return list(runs)
        return [run for run in runs if run.id not in self.faults]

    def fault(
        self,
        run_id: str,
        step: str,
        error: Exception,
        *,
        final: bool = False,
        exits: Iterable[Exit] = (),
    ) -> None:
        """Record that ``run_id`` failed ``step`` (the first fault of a pass names it)."""
        fault = self.faults.get(run_id)
        if fault is None:
            fault = self.faults[run_id] = Fault(step, error, final)
            log.error("run %s: %s", run_id, fault.text(), exc_info=error)
        fault.final = fault.final or final
        fault.exits.extend(exits)

    def ok(self, run_id: str, step: str) -> None:
        """``run_id`` went through ``step``: its strikes for that step are forgiven."""
        if self._next.get(run_id, ("", 0))[0] == step:
            del self._next[run_id]

    def each(
        self,
        s: Session,
        runs: Iterable[RunRow],
        step: str,
        fn: Callable[[RunRow], T],
        *,
        isolated: bool = False,
        skip_faulted: bool = True,
        undo: Callable[[Sequence[str]], None] | None = None,
        deferred: Deferred | None = None,
    ) -> dict[str, T]:
        """``fn(run)`` for each of ``runs`` (but those already faulted this pass) under a
        savepoint; the results by run id of those that went through. ``isolated``: one
        savepoint per run from the start (``fn`` has effects outside the store that a
        second call would repeat); ``undo``: what takes back the effects outside the store
        of the calls of some runs (by id) under a savepoint that was rolled back (e.g.
        queued launches): all of them before each is done again under its own, or one
        whose own savepoint failed; ``deferred``: the rows the calls queue
        rather than write, written once after all of them under their savepoint (when it
        is rolled back they are discarded, and each run, done again, writes its own)."""
        todo = [(run.id, run) for run in (self.live(runs) if skip_faulted else runs)]
        if not todo:
            return {}
        s.flush()  # earlier steps' changes: not this step's to fail on
        done = None if isolated else _all_at_once(s, todo, fn, undo, deferred)
        if done is None:  # isolated, or some run failed: one savepoint each
            done, failed = _one_by_one(s, todo, fn, undo)
            breaker(step, len(todo), failed)
            for run_id, error in failed.items():
                self.fault(run_id, step, error)
        for run_id in done:
            if run_id not in self.faults:  # fn may have recorded one and gone on
                self.ok(run_id, step)
        return done

    def whole(self, runs: list[RunRow], step: str, fn: Callable[[list[RunRow]], T]) -> T:
        """``fn(runs)``, a step that takes every run at once and writes nothing (the
        queue policy); when it raises, each run alone finds the ones it fails on, which
        are parked, and it is asked again without them."""
        try:
            result = fn(runs)
        except NOT_A_RUNS:
            raise
        except Exception:  # which run? each alone
            failed = {}
            for run in runs:
                try:
                    fn([run])
                except NOT_A_RUNS:
                    raise
                except Exception as exc:
                    failed[run.id] = exc
            breaker(step, len(runs), failed)
            for run_id, error in failed.items():
                self.fault(run_id, step, error)
            result = fn([run for run in runs if run.id not in failed])
        for run in self.live(runs):
            self.ok(run.id, step)
        return result

    def resolve(self, s: Session, now: datetime) -> None:
        """Park or end each run that failed a step of this pass (once per pass)."""
        for run_id, fault in list(self.faults.items()):
            if run_id in self._resolved:
                continue
            self._resolved.add(run_id)
            step, n = self._next.get(run_id, (fault.step, 0))
            n = n + 1 if step == fault.step else 1
            self._next[run_id] = (fault.step, n)
            run = s.get(RunRow, run_id)
            if run is None:
                continue
            if fault.final or n >= STRIKES:
                self._end(s, run, fault, n, now)
            else:
                self.notes[run_id] = fault.text()
                run.message = (
                    f"{fault.text()}; tried again next pass ({n} of {STRIKES} in a row: then"
                    " the run is stopped)"
                )

    def _end(self, s: Session, run: RunRow, fault: Fault, n: int, now: datetime) -> None:
        why = fault.text() + ("" if fault.final else f" ({n} passes in a row)")
        try:
            with s.begin_nested():
                kills = stop_run(s, run, f"{why}; {STOPPED}", fault.exits, now)
        except PASS_LEVEL:
            raise
        except Exception:  # not even that: it stays as it is, and is tried again
            log.exception("run %s: could not be stopped after: %s", run.id, why)
            return
        self._next.pop(run.id, None)
        self.signals += kills


_SHARDS_OF = select(*shard_columns()).where(SHARDS.c.run_id == bindparam("run_id"))
_OPEN_OF = select(*attempt_columns()).where(
    ATTEMPTS.c.run_id == bindparam("run_id"), ATTEMPTS.c.ended_at.is_(None)
)


def stop_run(
    s: Session, run: RunRow, why: str, exits: Iterable[Exit], now: datetime
) -> list[tuple[str, Signal]]:
    """End ``run`` as failed, saying ``why``: its open attempts closed (with their exit
    from ``exits`` if there is one; else killed, the kill sent once this is committed),
    every shard not yet ended failed. No policy is asked: one of them may be what broke.
    Returns the kills to send."""
    by_handle = {exit.handle: exit for exit in exits}
    kills: list[tuple[str, Signal]] = []
    usage: list[tuple[AttemptRecord, bool]] = []
    attempts = [AttemptRecord(*row) for row in s.execute(_OPEN_OF, {"run_id": run.id})]
    shards = {row.id: ShardRecord(*row) for row in s.execute(_SHARDS_OF, {"run_id": run.id})}
    for attempt in attempts:
        handle = attempt.handle or ""
        exit = by_handle.get(handle)
        if exit is not None:
            attempt.ended_at, attempt.exit_code = exit.ended_at, normalize_exit(exit.returncode)
            shards[attempt.shard_id].exit_code = attempt.exit_code
        else:  # still running, or never reported
            attempt.ended_at = attempt.killed_at = now
            if handle:
                kills.append((handle, "kill"))
        transition(attempt, AttemptState.FAILED, now)
        attempt.reason = why
        usage.append((attempt, exit.launched if exit is not None else True))
    ended = [shard for shard in shards.values() if not ShardState(shard.state).terminal]
    for shard in ended:
        transition(shard, ShardState.FAILED, now)
        shard.reason = why
    update_attempts(s, attempts, ("state", "reason", "exit_code", "ended_at", "killed_at"))
    telemetry.exits(s, [str(AttemptState.FAILED)] * len(attempts))
    update_shards(s, ended, ("state", "reason", "exit_code", "ended_at"))
    if not RunState(run.state).terminal:
        transition(run, RunState.FAILED, now)
    run.message, run.queue_position = why, None
    s.flush()
    try:  # metered if it can be: the run's end comes first (its machine may be what broke)
        with s.begin_nested():
            billing.record(s, [billing.usage(a, run, ran=ran) for a, ran in usage])
    except PASS_LEVEL:
        raise
    except Exception:
        log.exception(
            "run %s: the usage of its %d last attempt(s) not recorded", run.id, len(usage)
        )
    return kills


class Deferred(Protocol):
    """Rows a step's calls queue, written together after them (see :meth:`Bulkhead.each`)."""

    def write(self, s: Session) -> None:
        """Write the rows queued so far, and forget them."""

    def discard(self) -> None:
        """Forget the rows queued so far (their savepoint was rolled back), and queue no
        more: from now on each call writes its own."""


def _all_at_once(
    s: Session,
    todo: list[tuple[str, RunRow]],
    fn: Callable[[RunRow], T],
    undo: Callable[[Sequence[str]], None] | None,
    deferred: Deferred | None,
) -> dict[str, T] | None:
    """``fn`` for every run under one savepoint; None when some run raised (rolled back,
    and what the calls did outside the store taken back by ``undo``)."""
    try:
        with s.begin_nested():
            done = {run_id: fn(run) for run_id, run in todo}
            if deferred is not None:
                s.flush()  # the runs' rows first: runs are locked before their shards
                deferred.write(s)
        return done
    except PASS_LEVEL:
        raise
    except Exception:  # find the run(s): one savepoint each
        if deferred is not None:
            deferred.discard()
        if undo is not None:
            undo([run_id for run_id, _ in todo])
        return None


def _one_by_one(
    s: Session,
    todo: list[tuple[str, RunRow]],
    fn: Callable[[RunRow], T],
    undo: Callable[[Sequence[str]], None] | None,
) -> tuple[dict[str, T], dict[str, Exception]]:
    """``fn`` for each run under its own savepoint: the results and the errors by run (a
    run whose savepoint failed, if only to commit, is among the errors only, what its
    call did outside the store taken back by ``undo``)."""
    done: dict[str, T] = {}
    failed: dict[str, Exception] = {}
    for run_id, run in todo:
        try:
            with s.begin_nested():
                result = fn(run)
            done[run_id] = result
        except PASS_LEVEL:
            raise
        except Exception as exc:
            if undo is not None:
                undo([run_id])
            failed[run_id] = exc
    return done, failed
