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
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.states import (
    ATTEMPT_TRANSITIONS,
    MERGE_REOPEN,
    RUN_REOPEN,
    RUN_TRANSITIONS,
    SHARD_REOPEN,
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


def reopen(row: RunRow | ShardRow, now: datetime) -> None:
    """Take an ended run, or one of its unsuccessful shards, back out of its terminal state
    for a retry (``RUN_REOPEN``/``SHARD_REOPEN``): the run to ``queued``, the shard to
    ``pending`` with a fresh retry budget. Its history stays; the attempts go on numbering.

    Raises :class:`IllegalTransition` for anything else (a live or succeeded one)."""
    if isinstance(row, RunRow):
        run_current = RunState(row.state)
        run_target = RUN_REOPEN.get(run_current)
        if run_target is None:
            raise IllegalTransition("run", row.id, run_current, RunState.QUEUED)
        row.state = run_target.value
        row.ended_at = row.cancel_requested_at = row.message = row.course = None
        row.fail_reason = None
        row.reopened = (row.reopened or 0) + 1
        row.reopened_at = now
        return
    current = ShardState(row.state)
    target = (MERGE_REOPEN if row.index == MERGE_INDEX else SHARD_REOPEN).get(current)
    if target is None:
        raise IllegalTransition("shard", f"{row.run_id}/{row.index}", current, ShardState.PENDING)
    row.state = target.value
    row.started_at = row.ended_at = row.exit_code = row.reason = None  # of the next attempt
    row.failures = row.ignored = 0
    row.not_before = None
