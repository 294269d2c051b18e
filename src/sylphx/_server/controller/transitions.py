"""The one transition function: every shard and run status change goes through here.

Shards may be ORM rows or plain records (:mod:`.store.records`, the reconciler's hot
paths). The change reaches the store as a compare-and-set: the rows' ``version`` column
(``version_id_col``, see ``store/schema.py``) makes the UPDATE match only the version that
was read, so a concurrent writer causes ``StaleDataError`` and a retry, never a lost update.
"""

from __future__ import annotations

from datetime import datetime

from sylphx._core.errors import IllegalTransition
from sylphx._core.states import RUN_TRANSITIONS, SHARD_TRANSITIONS, RunState, ShardState
from sylphx._server.store import RunRow, ShardRow
from sylphx._server.store.records import ShardRecord

_SHARD_NEXT = {str(a): frozenset(str(b) for b in bs) for a, bs in SHARD_TRANSITIONS.items()}
_SHARD_TERMINAL = frozenset(str(state) for state in ShardState if state.terminal)
_STARTING = str(ShardState.STARTING)


def transition(
    row: RunRow | ShardRow | ShardRecord, target: RunState | ShardState, now: datetime
) -> None:
    """Move a run or shard to ``target``, stamping start/end times.

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
    # Shards move by the hundred in one pass: the table is looked up by the plain values
    # (an enum member's hash and properties are Python calls); str() of a member is its value.
    current, value = str(row.state), str(target)
    allowed = _SHARD_NEXT.get(current)
    if allowed is None or value not in allowed:
        shard = f"{row.run_id}/{row.index}"
        raise IllegalTransition("shard", shard, ShardState(current), ShardState(value))
    if value == _STARTING and row.started_at is None:
        row.started_at = now
    if value in _SHARD_TERMINAL:
        row.ended_at = now
    row.state = value
