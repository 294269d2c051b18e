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
from .bulkhead import Bulkhead
from .policy import success
from .transitions import transition

_ENDED_SHARDS = select(ShardRow.index, ShardRow.state, ShardRow.ended_at).where(
    ShardRow.run_id == bindparam("run_id")
)
_ENDED_SHARDS_OF = select(ShardRow.run_id, ShardRow.index, ShardRow.state, ShardRow.ended_at).where(
    ShardRow.run_id.in_(bindparam("run_ids", expanding=True))
)
CHUNK = 500  # runs per query (bound parameters stay far below every backend's limit)
Ended = list[tuple[int, str, datetime | None]]  # a run's shards: index, state, ended_at


def final_status(
    run: RunRow, counts: Counter[ShardState], merge: ShardRecord | None
) -> RunState | None:
    """The status the run ends with now (None: it goes on), by the success policy."""
    final = success.final_status(
        counts,
        cancel_requested=run.cancel_requested_at is not None,
        run_failed=run.fail_reason is not None,
    )
    return success.with_merge(final, ShardState(merge.state) if merge else None)


def ended_shards(s: Session, run_ids: list[str]) -> dict[str, Ended]:
    """The shards of the runs that end this pass, read for all of them at once (a pass
    that ends 50 single-shard runs reads them in one query, not 50)."""
    out: dict[str, Ended] = {run_id: [] for run_id in run_ids}
    for first in range(0, len(run_ids), CHUNK):
        rows = s.execute(_ENDED_SHARDS_OF, {"run_ids": run_ids[first : first + CHUNK]})
        for run_id, index, state, ended in rows:
            out[run_id].append((index, state, ended))
    return out


def _ends(run: RunRow, counts: Counter[ShardState], merge: ShardRecord | None) -> bool:
    """Whether the run ends now; a run whose status cannot be worked out (a bad row) is
    left to its own roll-up, under the bulkhead, where it fails alone."""
    try:
        return final_status(run, counts, merge) is not None
    except Exception:
        return False


def roll_up_all(
    s: Session,
    bh: Bulkhead,
    runs: list[RunRow],
    counts: dict[str, Counter[ShardState]],
    steps: dict[str, ShardRecord],
    now: datetime,
) -> None:
    """Roll up each of ``runs`` not ended yet (see :func:`roll_up`), each under the
    bulkhead (a parked run too: its shards may all have ended), the shards of those that
    end read at once."""
    going = [run for run in runs if not RunState(run.state).terminal]
    ending = [r.id for r in going if _ends(r, counts[r.id], steps.get(r.id))]
    ended = ended_shards(s, ending)
    bh.each(
        s,
        going,
        "rolling it up",
        lambda run: roll_up(
            s,
            run,
            counts[run.id],
            now,
            note=bh.notes.get(run.id),
            merge=steps.get(run.id),
            shards=ended.get(run.id),
        ),
        skip_faulted=False,
    )


def roll_up(
    s: Session,
    run: RunRow,
    counts: Counter[ShardState],
    now: datetime,
    note: str | None = None,
    merge: ShardRecord | None = None,
    shards: Ended | None = None,
) -> None:
    """End the run once every shard is terminal (``counts``: its shards by state) and its
    ``merge`` step, if it has one, has ended; ``note``: why the run was parked this pass,
    kept in the message it ends with. ``shards``: the run's shards if read already (see
    :func:`ended_shards`)."""
    final = final_status(run, counts, merge)
    if final is None:
        return
    if shards is None:
        shards = [tuple(row) for row in s.execute(_ENDED_SHARDS, {"run_id": run.id})]  # type: ignore[misc]
    if run.state == RunState.QUEUED and final not in RUN_TRANSITIONS[RunState.QUEUED]:
        transition(run, RunState.RUNNING, now)
    transition(run, final, now)
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
