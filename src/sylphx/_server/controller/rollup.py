"""Rolling a run up: once every shard is terminal, the run ends with one aggregate status
(the success policy's) and a message saying how it went."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from sylphx._core.merge import MERGE_INDEX
from sylphx._core.states import RUN_TRANSITIONS, RunState, ShardState
from sylphx._server.store import RunRow, ShardRow
from sylphx._server.store.records import ShardRecord

from . import merging
from .policy import success
from .transitions import transition

_ENDED_SHARDS = select(ShardRow.index, ShardRow.state, ShardRow.ended_at).where(
    ShardRow.run_id == bindparam("run_id")
)


def roll_up(
    s: Session,
    run: RunRow,
    counts: Counter[ShardState],
    now: datetime,
    note: str | None = None,
    merge: ShardRecord | None = None,
) -> None:
    """End the run once every shard is terminal (``counts``: its shards by state) and its
    ``merge`` step, if it has one, has ended; ``note``: why the run was parked this pass,
    kept in the message it ends with."""
    final = success.final_status(
        counts,
        cancel_requested=run.cancel_requested_at is not None,
        run_failed=run.fail_reason is not None,
    )
    final = success.with_merge(final, ShardState(merge.state) if merge else None)
    if final is None:
        return
    if run.state == RunState.QUEUED and final not in RUN_TRANSITIONS[RunState.QUEUED]:
        transition(run, RunState.RUNNING, now)
    transition(run, final, now)
    shards = s.execute(_ENDED_SHARDS, {"run_id": run.id}).all()
    run.ended_at = max((ended for _, _, ended in shards if ended), default=now)
    states = [(index, state) for index, state, _ in shards if index != MERGE_INDEX]
    merged = merging.note(run.id, merge)
    notes = (course_note(run), note, success.summary(states, counts), merged)
    run.message = "; ".join(m for m in notes if m) or None
    run.queue_position = None


def course_note(run: RunRow) -> str | None:
    """The part of the message that explains the run's course (kept until it ends)."""
    notes = [note for note in (run.course, run.fail_reason) if note]
    return "; ".join(notes) or None
