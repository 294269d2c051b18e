"""Deadline policy: when a live attempt is sent SIGTERM, and when SIGKILL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from sylphx._core.states import ShardState

from .transitions import transition

if TYPE_CHECKING:
    from sylphx._core.spec import RunSpec
    from sylphx._server.store import RunRow

Action = Literal["term", "kill"]


@dataclass(frozen=True)
class LiveAttempt:
    started_at: datetime
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
) -> tuple[Action, str] | None:
    """``("term", reason)`` when the attempt must be asked to stop (timeout or cancel),
    or, when a preemption asked it to stop, ``("kill", "preempt")`` after the grace;
    ``("kill", reason)`` once the grace period after that has passed, else None."""
    if attempt.stop_reason is None:
        if cancel_requested:
            return ("term", "cancel")
        if now >= attempt.started_at + timedelta(seconds=timeout_seconds):
            return ("term", "timeout")
        return None
    requested = attempt.stop_requested_at
    if attempt.killed_at is None and requested is not None:
        return (
            ("kill", attempt.stop_reason)
            if now >= requested + timedelta(seconds=grace_seconds)
            else None
        )
    return None


def stop_live(
    run: RunRow,
    spec: RunSpec,
    now: datetime,
    *,
    kill_grace: float,
    preemption_grace: float,
) -> list[tuple[str, Action]]:
    """Apply :func:`next_action` to each running attempt of ``run`` (its shards loaded):
    record why and when on the attempt, and return the signals to send (by handle) once
    that record is committed."""
    signals: list[tuple[str, Action]] = []
    for shard in run.shards:
        if shard.state != ShardState.RUNNING or not shard.history:
            continue
        attempt = shard.history[-1]
        if attempt.ended_at is not None or attempt.started_at is None:
            continue
        action = next_action(
            LiveAttempt(
                attempt.started_at,
                attempt.stop_reason,
                attempt.stop_requested_at,
                attempt.killed_at,
            ),
            now=now,
            timeout_seconds=spec.timeout_seconds,
            grace_seconds=preemption_grace if attempt.stop_reason == "preempt" else kill_grace,
            cancel_requested=run.cancel_requested_at is not None,
        )
        if action is None or attempt.handle is None:
            continue
        sig, reason = action
        signals.append((attempt.handle, sig))
        if sig == "term":
            attempt.stop_reason, attempt.stop_requested_at = reason, now
        else:
            attempt.killed_at = now
    return signals


def stop(
    run: RunRow,
    spec: RunSpec,
    now: datetime,
    *,
    kill_grace: float,
    preemption_grace: float,
) -> list[tuple[str, Action]]:
    """One pass's look at a run with its shards loaded: :func:`stop_live`, and a
    cancelled run's pending shards cancelled."""
    signals = stop_live(run, spec, now, kill_grace=kill_grace, preemption_grace=preemption_grace)
    if run.cancel_requested_at is not None:
        for shard in run.shards:
            if shard.state == ShardState.PENDING:
                transition(shard, ShardState.CANCELLED, now)
                shard.reason = "Cancelled before it started"
    return signals
