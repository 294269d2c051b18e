"""Backoff policy: what an ended attempt means for its shard."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from sylphx._core.states import AttemptState, ShardState, StopCause

A, S = AttemptState, ShardState


@dataclass(frozen=True)
class Outcome:
    """The attempt's own result and where its shard goes next."""

    attempt_state: AttemptState
    shard_state: ShardState  # PENDING means: retry
    exit_code: int
    reason: str
    uses_budget: bool  # counts against backoffLimitPerIndex
    preempted: bool = False  # counts against the preemption ceiling instead


_PREEMPTED = {
    StopCause.PREEMPT: "Preempted: stopped to make room for a gang run",
    StopCause.GANG_RESTART: (
        "GangRestart: a shard of its gang was lost; the whole gang was stopped to be"
        " admitted again together"
    ),
    None: "Preempted: the executor lost the attempt",
}


def normalize_exit(returncode: int) -> int:
    """Shell convention: death by signal N is exit code 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_reason(code: int) -> str:
    if code > 128:
        try:
            return f"Killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return "Error"


def decide(
    returncode: int,
    *,
    stop_reason: str | None,
    failures: int,
    budget: int,
    reason: str | None = None,
    lost: bool = False,
    preemptions: int = 0,
    preemption_ceiling: int = 10,
) -> Outcome:
    """Classify an exit. ``stop_reason``: the :class:`StopCause` the control plane
    stored before it signalled the attempt, if it did. Failures retry while ``failures <
    budget``; timeouts and cancels are final; ``reason`` lets an executor name a cause
    (e.g. LaunchError). A preemption (``StopCause.PREEMPT``; ``GANG_RESTART``: stopped
    because a sibling in its gang was lost; or ``lost``: the executor lost the attempt,
    e.g. its node or its supervisor died) retries without using the failure budget, up
    to ``preemption_ceiling`` times per index."""
    code = normalize_exit(returncode)
    stop = StopCause(stop_reason) if stop_reason is not None else None
    if stop is StopCause.TIMEOUT:
        return Outcome(A.TIMED_OUT, S.TIMED_OUT, code, "DeadlineExceeded", False)
    if stop is StopCause.CANCEL:
        return Outcome(A.CANCELLED, S.CANCELLED, code, "Cancelled", False)
    if stop in (StopCause.PREEMPT, StopCause.GANG_RESTART) or lost:
        why = reason or _PREEMPTED[stop]
        if preemptions < preemption_ceiling:
            return Outcome(A.PREEMPTED, S.PENDING, code, why, False, preempted=True)
        limit = f"PreemptionLimit: preempted {preemptions + 1} times (ceiling {preemption_ceiling})"
        return Outcome(A.PREEMPTED, S.FAILED, code, f"{limit}; last: {why}", False, True)
    if code == 0:
        return Outcome(A.SUCCEEDED, S.SUCCEEDED, 0, "Completed", False)
    why = reason or _signal_reason(code)
    if failures < budget:
        return Outcome(A.FAILED, S.PENDING, code, why, True)
    return Outcome(A.FAILED, S.FAILED, code, why, True)
