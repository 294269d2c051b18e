"""A pass's cheap look at every active run, in a few aggregate queries.

It answers, without loading a single shard: how many shards each active run has in each
state, when a live attempt of a run may next need a signal, and (only when a gang run
waits) which opportunistic attempts could be preempted. The reconciler loads the shards
(as records, with their latest attempts) of just the runs that need a close look this
pass -- runs with cancels or due deadlines;
exits and starts touch only their own shards (:mod:`.settle`, :mod:`.launching`) -- so a
pass costs what changed, not everything active. Every minute a pass looks at everything
anyway (level-triggered as before).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, func, select
from sqlalchemy.orm import Session

from sylphx._core.machines import ZERO, Resources
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.spec import RunSpec
from sylphx._core.states import RunState, ShardState, StopCause
from sylphx._server.controller.policy.preemption import Victim
from sylphx._server.store import AttemptRow, RunRow, ShardRow
from sylphx._server.store.records import (
    ATTEMPTS,
    SHARD_COLUMNS,
    SHARDS,
    AttemptRecord,
    ShardRecord,
    attempt_columns,
    shard_columns,
)

ACTIVE = (RunState.QUEUED.value, RunState.RUNNING.value)
LIVE = (ShardState.STARTING.value, ShardState.RUNNING.value)


# Built once: a pass runs these every time, and building a statement costs more than
# SQLite takes to answer it.
_SHARD_COUNTS = (  # the merge step (index -1) is not a shard: see merges()
    select(ShardRow.run_id, ShardRow.state, func.count())
    .join(RunRow, RunRow.id == ShardRow.run_id)
    .where(RunRow.state.in_(ACTIVE), ShardRow.index >= 0)
    .group_by(ShardRow.run_id, ShardRow.state)
)
_MERGES = (
    select(*shard_columns())
    .join(RunRow, RunRow.id == SHARDS.c.run_id)
    .where(RunRow.state.in_(ACTIVE), SHARDS.c.index == MERGE_INDEX)
)
_LIVE_CLOCKS = (
    select(
        AttemptRow.run_id,
        func.min(case((AttemptRow.stop_reason.is_(None), AttemptRow.started_at))),
        func.min(case((AttemptRow.killed_at.is_(None), AttemptRow.stop_requested_at))),
    )
    .join(RunRow, RunRow.id == AttemptRow.run_id)
    .where(RunRow.state.in_(ACTIVE), AttemptRow.ended_at.is_(None))
    .group_by(AttemptRow.run_id)
)


_BACKING_OFF = (
    select(ShardRow.run_id, func.count())
    .join(RunRow, RunRow.id == ShardRow.run_id)
    .where(
        RunRow.state.in_(ACTIVE),
        ShardRow.state == ShardState.PENDING.value,
        ShardRow.not_before > bindparam("now"),
        ShardRow.index >= 0,
    )
    .group_by(ShardRow.run_id)
)


def backing_off(s: Session, now: datetime) -> dict[str, int]:
    """Pending shards of each active run still waiting out their ``retryBackoff`` delay."""
    return {run_id: n for run_id, n in s.execute(_BACKING_OFF, {"now": now})}


def shard_counts(s: Session) -> dict[str, Counter[ShardState]]:
    """Shards of every active run, counted by state."""
    counts: dict[str, Counter[ShardState]] = defaultdict(Counter)
    for run_id, state, n in s.execute(_SHARD_COUNTS):
        counts[run_id][ShardState(state)] = n
    return counts


def merges(s: Session) -> dict[str, ShardRecord]:
    """The merge step of every active run that has one (see ``_core.merge``)."""
    return {shard.run_id: shard for shard in (ShardRecord(*row) for row in s.execute(_MERGES))}


@dataclass(frozen=True)
class Clocks:
    """The earliest moments a run's live attempts may need a signal."""

    first_started: datetime | None  # earliest start of a live attempt not asked to stop
    first_stop: datetime | None  # earliest stop request of a live attempt not yet killed

    def due(self, spec: RunSpec, now: datetime, grace_seconds: float) -> bool:
        """Whether a timeout or a grace period of the run may have run out by ``now``."""
        timeout = spec.timeout_seconds
        if spec.merge is not None and spec.merge.timeout_seconds:  # the merge step's own
            timeout = min(timeout, spec.merge.timeout_seconds)
        if self.first_started is not None and now >= self.first_started + timedelta(
            seconds=timeout
        ):
            return True
        return self.first_stop is not None and now >= self.first_stop + timedelta(
            seconds=grace_seconds
        )


def live_clocks(s: Session) -> dict[str, Clocks]:
    """:class:`Clocks` of every active run that has a live attempt."""
    rows = s.execute(_LIVE_CLOCKS)
    return {run_id: Clocks(started, stop) for run_id, started, stop in rows}


def needing_a_look(
    s: Session, runs: list[RunRow], specs: dict[str, RunSpec], now: datetime, grace: float
) -> list[RunRow]:
    """The ``runs`` with a cancel, a failure limit reached, or a clock that may be due."""
    clocks = live_clocks(s)
    return [
        run
        for run in runs
        if run.cancel_requested_at is not None
        or run.fail_reason is not None
        or (run.id in clocks and clocks[run.id].due(specs[run.id], now, grace))
    ]


_RESTARTING = (
    select(AttemptRow.run_id)
    .join(RunRow, RunRow.id == AttemptRow.run_id)
    .where(
        RunRow.state.in_(ACTIVE),
        AttemptRow.ended_at.is_(None),
        AttemptRow.stop_reason == StopCause.GANG_RESTART.value,
    )
    .distinct()
)


def restarting_gangs(s: Session) -> set[str]:
    """The active runs with members still stopping for a gang restart."""
    return set(s.scalars(_RESTARTING))


def preemptible(s: Session, now: datetime) -> tuple[list[Victim], Resources]:
    """Running opportunistic attempts that may be preempted, and the capacity held by
    those already asked to stop for a preemption (it is on its way back)."""
    victims: list[Victim] = []
    stopping = ZERO
    rows = s.execute(
        select(
            AttemptRow.id,
            RunRow.machine,
            AttemptRow.started_at,
            AttemptRow.stop_reason,
            ShardRow.preemptions,
        )
        .join(ShardRow, ShardRow.id == AttemptRow.shard_id)
        .join(RunRow, RunRow.id == AttemptRow.run_id)
        .where(
            RunRow.state.in_(ACTIVE),
            RunRow.gang.is_(False),
            ShardRow.state.in_(LIVE),
            ShardRow.index >= 0,  # a merge step is not an opportunistic shard
            AttemptRow.ended_at.is_(None),
        )
        .order_by(AttemptRow.id)
    )
    for attempt_id, machine, started_at, stop_reason, preemptions in rows:
        if stop_reason == StopCause.PREEMPT:
            stopping = stopping + Resources.of_tier(machine)
        elif stop_reason is None and started_at is not None:
            age = (now - started_at).total_seconds()
            victims.append(Victim(attempt_id, machine, age, preemptions))
    return victims, stopping


Shards = list[tuple[ShardRecord, AttemptRecord | None]]  # each with its latest attempt

CHUNK = 500  # runs per query (bound parameters stay far below every backend's limit)
_SHARDS_OF = (
    select(*shard_columns(), *attempt_columns())
    .outerjoin(  # a shard's latest attempt is number ``attempts``
        ATTEMPTS, and_(ATTEMPTS.c.shard_id == SHARDS.c.id, ATTEMPTS.c.number == SHARDS.c.attempts)
    )
    .where(SHARDS.c.run_id.in_(bindparam("run_ids", expanding=True)))
    .order_by(SHARDS.c.run_id, SHARDS.c.index)
)


def load_shards(s: Session, runs: list[RunRow]) -> dict[str, Shards]:
    """The shards of ``runs``, each with its latest attempt (None before the first), as
    records: the reconciler never holds shards or attempts as ORM objects."""
    loaded: dict[str, Shards] = {run.id: [] for run in runs}
    ids, n_shard = list(loaded), len(SHARD_COLUMNS)
    for first in range(0, len(ids), CHUNK):
        for row in s.execute(_SHARDS_OF, {"run_ids": ids[first : first + CHUNK]}):
            shard = ShardRecord(*row[:n_shard])
            attempt = AttemptRecord(*row[n_shard:]) if row[n_shard] is not None else None
            loaded[shard.run_id].append((shard, attempt))
    return loaded
