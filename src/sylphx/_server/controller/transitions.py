"""The one transition function: every run, shard and attempt status change goes through here.

In a reconcile pass shards and attempts are plain records (:mod:`.store.records`,
written in batches) and runs are ORM rows; the API's sessions use ORM rows throughout.
Either way the change reaches the store as a compare-and-set: the rows' ``version``
column makes the UPDATE match only the version that was read, so a concurrent writer
causes ``StaleDataError`` and a retry, never a lost update.
"""

from __future__ import annotations

from datetime import datetime

from sylphx._core.errors import IllegalTransition
from sylphx._core.states import (
    ATTEMPT_TRANSITIONS,
    RUN_TRANSITIONS,
    SHARD_TRANSITIONS,
    AttemptState,
    RunState,
    ShardState,
)
from sylphx._server.store import RunRow, ShardRow
from sylphx._server.store.records import AttemptRecord, ShardRecord

# Shards and attempts move by the hundred in one pass: the tables are looked up by the
# plain values (an enum member's hash and properties are Python calls); str() of a
# member is its value.
_SHARD_NEXT = {str(a): frozenset(str(b) for b in bs) for a, bs in SHARD_TRANSITIONS.items()}
_SHARD_TERMINAL = frozenset(str(state) for state in ShardState if state.terminal)
_ATTEMPT_NEXT = {str(a): frozenset(str(b) for b in bs) for a, bs in ATTEMPT_TRANSITIONS.items()}
_STARTING = str(ShardState.STARTING)

Target = RunState | ShardState | AttemptState


def transition(
    row: RunRow | ShardRow | ShardRecord | AttemptRecord, target: Target, now: datetime
) -> None:
    """Move a run, shard or attempt to ``target``, stamping start/end times (an attempt's
    end is its exit's: the caller sets ``ended_at``).

    Raises :class:`IllegalTransition` when the state machine does not allow it.
    """
    if isinstance(row, RunRow):
        run_current = RunState(row.state)
        run_target = RunState(target)
        if run_target not in RUN_TRANSITIONS[run_current]:
            raise IllegalTransition("run", row.id, run_current, run_target)
        if run_target is RunState.RUNNING:
            row.started_at = row.started_at or now
        if run_target.terminal:
            row.ended_at = now
        row.state = run_target.value
        return
    current, value = str(row.state), str(target)
    if isinstance(row, AttemptRecord):
        if value not in _ATTEMPT_NEXT.get(current, ()):
            attempt = f"{row.run_id}/attempt {row.id}"
            raise IllegalTransition("attempt", attempt, AttemptState(current), AttemptState(value))
        row.state = value
        return
    allowed = _SHARD_NEXT.get(current)
    if allowed is None or value not in allowed:
        shard = f"{row.run_id}/{row.index}"
        raise IllegalTransition("shard", shard, ShardState(current), ShardState(value))
    if value == _STARTING and row.started_at is None:
        row.started_at = now
    if value in _SHARD_TERMINAL:
        row.ended_at = now
    row.state = value
