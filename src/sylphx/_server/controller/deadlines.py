"""Deadline policy: when a live attempt is sent SIGTERM, and when SIGKILL.

:func:`next_action` is the policy; :func:`stop` applies it to a run's shards (records,
see ``survey.load_shards``) and stores why and when before any signal goes out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from sylphx._core.states import ShardState, StopCause
from sylphx._server.store.records import (
    ATTEMPTS,
    AttemptRecord,
    ShardRecord,
    attempt_columns,
    update_attempts,
    update_shards,
)

from . import telemetry
from .transitions import transition

if TYPE_CHECKING:
    from sylphx._core.spec import RunSpec
    from sylphx._server.store import RunRow

    from .survey import Shards

Action = Literal["term", "kill"]
STOP_KEYS = ("stop_reason", "stop_requested_at", "killed_at")
_LIVE = (ShardState.STARTING, ShardState.RUNNING)  # starting: placed, waiting for a node
_PREEMPTIONS = (StopCause.PREEMPT, StopCause.GANG_RESTART)  # killed after the preemption grace
CANCELLED_BEFORE_START = "Cancelled before it started"
NOT_STARTED_RUN_FAILED = "RunFailed: not started because its run failed"


@dataclass(frozen=True)
class LiveAttempt:
    """What the deadline policy reads of a running attempt."""

    started_at: datetime | None  # None: placed but not started yet (Ray)
    stop_reason: str | None
    stop_requested_at: datetime | None
    killed_at: datetime | None


def next_action(
    attempt: LiveAttempt,
    *,
    now: datetime,
    timeout_seconds: int,
    grace_seconds: float,
    cancel_requested: bool,
    run_failed: bool = False,
) -> tuple[Action, StopCause] | None:
    """``("term", cause)`` when the attempt must be asked to stop (timeout, cancel, or
    ``run_failed``: its run failed by its failure policy),
    or, when a preemption asked it to stop, ``("kill", PREEMPT)`` after the grace;
    ``("kill", cause)`` once the grace period after that has passed, else None."""
    if attempt.stop_reason is None:
        if cancel_requested:
            return ("term", StopCause.CANCEL)
        if run_failed:
            return ("term", StopCause.FAIL_RUN)
        started = attempt.started_at
        if started is not None and now >= started + timedelta(seconds=timeout_seconds):
            return ("term", StopCause.TIMEOUT)
        return None
    requested = attempt.stop_requested_at
    if attempt.killed_at is None and requested is not None:
        return (
            ("kill", StopCause(attempt.stop_reason))
            if now >= requested + timedelta(seconds=grace_seconds)
            else None
        )
    return None


def stop_live(
    run: RunRow,
    shards: Shards,
    spec: RunSpec,
    now: datetime,
    *,
    kill_grace: float,
    preemption_grace: float,
) -> tuple[list[tuple[str, Action]], list[AttemptRecord]]:
    """Apply :func:`next_action` to each running attempt among ``shards`` (the run's):
    the signals to send (by handle) once stored, and the attempts changed (copies:
    ``shards`` stay as read, so a step rolled back can be run again)."""
    signals: list[tuple[str, Action]] = []
    changed: list[AttemptRecord] = []
    for shard, latest in shards:
        if shard.state not in _LIVE or latest is None:
            continue
        if latest.ended_at is not None or latest.handle is None:
            continue
        action = next_action(
            LiveAttempt(
                latest.started_at, latest.stop_reason, latest.stop_requested_at, latest.killed_at
            ),
            now=now,
            timeout_seconds=spec.for_index(shard.index).timeout_seconds,
            grace_seconds=preemption_grace if latest.stop_reason in _PREEMPTIONS else kill_grace,
            cancel_requested=run.cancel_requested_at is not None,
            run_failed=run.fail_reason is not None,
        )
        if action is None:
            continue
        sig, cause = action
        attempt = replace(latest)
        if sig == "term":
            attempt.stop_reason, attempt.stop_requested_at = cause.value, now
        else:
            attempt.killed_at = now
        signals.append((latest.handle, sig))
        changed.append(attempt)
    return signals, changed


def stop(
    s: Session,
    run: RunRow,
    shards: Shards,
    spec: RunSpec,
    now: datetime,
    *,
    kill_grace: float,
    preemption_grace: float,
) -> list[tuple[str, Action]]:
    """One pass's look at a run and its ``shards``: :func:`stop_live`, and a cancelled
    run's (or a failed run's) pending shards cancelled; both stored. Returns the signals
    to send once the pass committed."""
    signals, attempts = stop_live(
        run, shards, spec, now, kill_grace=kill_grace, preemption_grace=preemption_grace
    )
    cancelled: list[ShardRecord] = []
    if run.cancel_requested_at is not None or run.fail_reason is not None:
        why = CANCELLED_BEFORE_START if run.cancel_requested_at else NOT_STARTED_RUN_FAILED
        for read, _ in shards:
            if read.state == ShardState.PENDING:
                shard = replace(read)
                transition(shard, ShardState.CANCELLED, now)
                shard.reason = why
                cancelled.append(shard)
    update_attempts(s, attempts, STOP_KEYS)
    update_shards(s, cancelled, ("state", "reason", "ended_at"))
    return signals


_LIVE_OF = select(*attempt_columns()).where(
    ATTEMPTS.c.run_id == bindparam("run_id"),
    ATTEMPTS.c.ended_at.is_(None),
    ATTEMPTS.c.stop_reason.is_(None),
)


def restart_gang(s: Session, run: RunRow, *, now: datetime) -> list[tuple[str, Action]]:
    """Ask every live member of a gang that lost one to stop (stored now; killed after
    the preemption grace): each comes back as a preemption, and the queue admits the
    gang again whole once none is left running. The SIGTERMs to send after the commit."""
    attempts = [AttemptRecord(*row) for row in s.execute(_LIVE_OF, {"run_id": run.id})]
    for attempt in attempts:
        attempt.stop_reason, attempt.stop_requested_at = StopCause.GANG_RESTART.value, now
    update_attempts(s, attempts, STOP_KEYS)
    return [(attempt.handle, "term") for attempt in attempts if attempt.handle]


def preempt(s: Session, attempt_ids: list[int], now: datetime) -> list[tuple[str, Action]]:
    """Ask the live ones of these attempts to stop for a preemption (stored now); the
    SIGTERMs to send once the pass committed."""
    if not attempt_ids:
        return []
    query = select(*attempt_columns()).where(ATTEMPTS.c.id.in_(attempt_ids))
    attempts = [AttemptRecord(*row) for row in s.execute(query)]
    live = [a for a in attempts if a.ended_at is None and a.handle and a.stop_reason is None]
    for attempt in live:
        attempt.stop_reason, attempt.stop_requested_at = StopCause.PREEMPT.value, now
    update_attempts(s, live, STOP_KEYS)
    telemetry.preempted(s, len(live))
    return [(attempt.handle, "term") for attempt in live if attempt.handle]
