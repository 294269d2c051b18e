"""Settling ended attempts: each attempt's outcome, its shard's next state, its usage.

A pass may settle hundreds of exits. They are read in one query and written with one
executemany per table (:mod:`..store.records`), not as ORM objects; the outcome is the
backoff policy's and every shard status change goes through :func:`transition`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from ..._spec import RunSpec
from ..._states import ShardState
from .. import billing
from ..executors.base import Exit
from ..store import RunRow
from ..store.records import (
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
from ..transitions import transition
from . import backoff

CHUNK = 500  # handles per query (bound parameters stay far below every backend's limit)
ATTEMPT_KEYS = ("state", "exit_code", "reason", "ended_at", "started_at", "log_truncated")
# not started_at: settling never moves a shard into STARTING, the only change that sets it
SHARD_KEYS = ("state", "exit_code", "reason", "failures", "preemptions", "ended_at")

_OPEN = (  # the open attempts among some handles, with their shards (built once)
    select(*attempt_columns(), *shard_columns())
    .join_from(ATTEMPTS, SHARDS, ATTEMPTS.c.shard_id == SHARDS.c.id)
    .where(
        ATTEMPTS.c.handle.in_(bindparam("handles", expanding=True)),
        ATTEMPTS.c.ended_at.is_(None),
    )
)


def settle(
    s: Session,
    exits: Sequence[Exit],
    spec_of: Callable[[str], RunSpec],
    *,
    preemption_ceiling: int,
) -> None:
    """Record how the attempts in ``exits`` ended (those still open; an exit already
    recorded is ignored), move their shards on and meter them."""
    s.flush()  # pending ORM changes first: the Core reads below do not autoflush
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
    for attempt in attempts:
        run = runs.get(attempt.run_id) or s.get(RunRow, attempt.run_id)
        assert run is not None
        runs[run.id] = run
        exit = by_handle[attempt.handle or ""]
        shard = shards[attempt.shard_id]
        finish(attempt, shard, exit, spec_of(run.id), preemption_ceiling)
        launched = not (exit.reason or "").startswith("LaunchError")
        usage.append(billing.usage(attempt, run, ran=launched))
    update_attempts(s, attempts, ATTEMPT_KEYS)
    update_shards(s, list(shards.values()), SHARD_KEYS)
    billing.record(s, usage)  # one usage row per attempt


def finish(
    attempt: AttemptRecord,
    shard: ShardRecord,
    exit: Exit,
    spec: RunSpec,
    preemption_ceiling: int,
) -> None:
    """Settle one ended attempt in memory: its outcome and its shard's next state."""
    outcome = backoff.decide(
        exit.returncode,
        stop_reason=attempt.stop_reason,
        failures=shard.failures,
        budget=spec.retry_budget,
        reason=exit.reason,
        lost=exit.lost and not spec.gang,  # a lost gang shard is not retried alone
        preemptions=shard.preemptions,
        preemption_ceiling=preemption_ceiling,
    )
    attempt.state = outcome.attempt_state.value
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
    if ShardState(shard.state) is ShardState.STARTING:
        transition(shard, ShardState.RUNNING, exit.ended_at)
    transition(shard, outcome.shard_state, exit.ended_at)
