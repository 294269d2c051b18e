"""Settling ended attempts: each attempt's outcome, its shard's next state, its usage.

A pass may settle hundreds of exits. They are read in one query and written with one
executemany per table (:mod:`..store.records`), not as ORM objects; the outcome is the
backoff policy's and every shard status change goes through :func:`transition`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from sylphx._core.spec import RunSpec
from sylphx._core.states import AttemptState, ShardState
from sylphx._server.executors.base import Exit
from sylphx._server.store import RunRow
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
from sylphx._server.tenancy import billing

from . import telemetry
from .bulkhead import NOT_A_RUNS, PASS_LEVEL, breaker
from .policy import backoff
from .transitions import transition

CHUNK = 500  # handles per query (bound parameters stay far below every backend's limit)
ATTEMPT_KEYS = ("state", "exit_code", "reason", "ended_at", "started_at", "log_truncated")
# not started_at: settling never moves a shard into STARTING, the only change that sets it
SHARD_KEYS = (
    "state", "exit_code", "reason", "failures", "preemptions", "ended_at", "ignored", "not_before"
)  # fmt: skip

_OPEN = (  # the open attempts among some handles, with their shards (built once)
    select(*attempt_columns(), *shard_columns())
    .join_from(ATTEMPTS, SHARDS, ATTEMPTS.c.shard_id == SHARDS.c.id)
    .where(
        ATTEMPTS.c.handle.in_(bindparam("handles", expanding=True)),
        ATTEMPTS.c.ended_at.is_(None),
    )
)


Unsettled = dict[str, tuple[Exception, list[Exit]]]


def settle(
    s: Session,
    exits: Sequence[Exit],
    spec_of: Callable[[str], RunSpec],
    *,
    preemption_ceiling: int,
    restarts: set[str] | None = None,
    bill_preemptions: bool = False,
) -> Unsettled:
    """Record how the attempts in ``exits`` ended (those still open; an exit already
    recorded is ignored), move their shards on and meter them. A run whose exits raise
    (in a policy, or in writing them) is left out, the others are settled: returns, by
    run id, the error and that run's exits (the caller ends the run with them).
    ``restarts`` gets the gang runs that lost a member which is to be retried: the
    caller stops its siblings, and the gang is admitted again as one. A window the
    platform preempted is recorded but not billed, unless ``bill_preemptions``."""
    by_handle = {e.handle: e for e in exits}
    handles = list(by_handle)
    attempts: list[AttemptRecord] = []
    shards: dict[int, ShardRecord] = {}
    n_attempt = len(ATTEMPT_COLUMNS)
    for first in range(0, len(handles), CHUNK):
        rows = s.execute(_OPEN, {"handles": handles[first : first + CHUNK]}).all()
        for row in rows:
            attempts.append(AttemptRecord(*row[:n_attempt]))
            shard = ShardRecord(*row[n_attempt:])
            shards.setdefault(shard.id, shard)
    runs: dict[str, RunRow] = {}
    usage = []
    failed: dict[str, Exception] = {}
    for attempt in attempts:
        if attempt.run_id in failed:
            continue
        try:
            run = runs.get(attempt.run_id) or s.get(RunRow, attempt.run_id)
            if run is None:
                raise LookupError(f"run {attempt.run_id} does not exist")
            runs[run.id] = run
            exit = by_handle[attempt.handle or ""]
            shard = shards[attempt.shard_id]
            spec = spec_of(run.id).for_index(shard.index)  # the merge step's own
            outcome = finish(attempt, shard, exit, spec, preemption_ceiling)
            if outcome.fail_run is not None and run.fail_reason is None:
                run.fail_reason = outcome.fail_run  # the pass stops the rest of the run
            billed = bill_preemptions or outcome.attempt_state is not AttemptState.PREEMPTED
            tier = spec.machine
            usage.append(
                billing.usage(attempt, run, ran=exit.launched, machine=tier, billed=billed)
            )
            retried = shard.state == ShardState.PENDING
            if spec.gang and exit.lost and retried and restarts is not None:
                restarts.add(run.id)
        except NOT_A_RUNS:  # (a failed read, outside a savepoint, is the pass's)
            raise
        except Exception as exc:  # this run's exits are not settled; the others are
            failed[attempt.run_id] = exc
    breaker("settling its shards' exits", len({a.run_id for a in attempts}), failed)
    failed |= _write(
        s,
        [a for a in attempts if a.run_id not in failed],
        [shard for shard in shards.values() if shard.run_id not in failed],
        [row for row in usage if row["run_id"] not in failed],
    )
    return {
        run_id: (exc, [by_handle[a.handle or ""] for a in attempts if a.run_id == run_id])
        for run_id, exc in failed.items()
    }


def _write(
    s: Session,
    attempts: list[AttemptRecord],
    shards: list[ShardRecord],
    usage: list[dict[str, object]],
) -> dict[str, Exception]:
    """Store the settled records: in one batch per table, or, when that fails, run by
    run; the runs whose records could not be stored, with why."""
    if not attempts:
        return {}

    def write(
        attempts: list[AttemptRecord], shards: list[ShardRecord], usage: list[dict[str, object]]
    ) -> None:
        records: list[AttemptRecord | ShardRecord] = [*attempts, *shards]
        seen = [(rec, rec.version) for rec in records]
        try:
            with s.begin_nested():
                update_attempts(s, attempts, ATTEMPT_KEYS)
                update_shards(s, shards, SHARD_KEYS)
                billing.record(s, usage)  # one usage row per attempt
        except BaseException:  # rolled back: the records are at the versions read
            for rec, version in seen:
                rec.version = version
            raise
        telemetry.exits(s, [str(a.state) for a in attempts])  # counted once the pass commits

    try:
        write(attempts, shards, usage)
        return {}
    except PASS_LEVEL:
        raise
    except Exception:  # which run? one savepoint each
        pass
    failed: dict[str, Exception] = {}
    run_ids = list(dict.fromkeys(a.run_id for a in attempts))
    for run_id in run_ids:
        try:
            write(
                [a for a in attempts if a.run_id == run_id],
                [shard for shard in shards if shard.run_id == run_id],
                [row for row in usage if row["run_id"] == run_id],
            )
        except PASS_LEVEL:
            raise
        except Exception as exc:
            failed[run_id] = exc
    breaker("storing its shards' exits", len(run_ids), failed)
    return failed


def finish(
    attempt: AttemptRecord,
    shard: ShardRecord,
    exit: Exit,
    spec: RunSpec,
    preemption_ceiling: int,
) -> backoff.Outcome:
    """Settle one ended attempt in memory: its outcome and its shard's next state (a
    failure retried waits its ``retryBackoff`` delay; a preemption is retried at once)."""
    outcome = backoff.decide(
        exit.returncode,
        stop_reason=attempt.stop_reason,
        failures=shard.failures,
        budget=spec.retry_budget,
        reason=exit.reason,
        lost=exit.lost,  # a preemption; a gang's siblings are stopped too (see settle)
        preemptions=shard.preemptions,
        preemption_ceiling=preemption_ceiling,
        rules=spec.failure_policy,
        ignored=shard.ignored,
    )
    transition(attempt, outcome.attempt_state, exit.ended_at)
    attempt.exit_code = outcome.exit_code
    attempt.reason = outcome.reason
    attempt.ended_at = exit.ended_at
    if exit.started_at is not None:  # the supervisor's record beats our launch time
        attempt.started_at = exit.started_at
    attempt.log_truncated = ",".join(exit.log_truncated) or None
    shard.exit_code = outcome.exit_code
    shard.reason = outcome.reason
    if outcome.uses_budget:
        shard.failures += 1
    if outcome.preempted:
        shard.preemptions += 1
    if outcome.ignored:
        shard.ignored += 1
    shard.not_before = None
    if outcome.shard_state is ShardState.PENDING and (outcome.uses_budget or outcome.ignored):
        wait = spec.retry_backoff.delay(shard.failures + shard.ignored)
        shard.not_before = exit.ended_at + timedelta(seconds=wait) if wait > 0 else None
    if ShardState(shard.state) is ShardState.STARTING:
        transition(shard, ShardState.RUNNING, exit.ended_at)
    transition(shard, outcome.shard_state, exit.ended_at)
    return outcome
