"""Backoff policy: what an ended attempt means for its shard."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from ..._states import ShardState


@dataclass(frozen=True)
class Outcome:
    """The attempt's own result and where its shard goes next."""

    attempt_state: ShardState
    shard_state: ShardState  # PENDING means: retry
    exit_code: int
    reason: str
    uses_budget: bool


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
) -> Outcome:
    """Classify an exit. Failures retry while ``failures < budget``; timeouts and
    cancels are final; ``reason`` lets an executor name a cause (e.g. LaunchError).
    ``lost`` (the shard's node died, an opportunistic run) retries without using budget."""
    code = normalize_exit(returncode)
    if stop_reason == "timeout":
        return Outcome(ShardState.TIMED_OUT, ShardState.TIMED_OUT, code, "DeadlineExceeded", False)
    if stop_reason == "cancel":
        return Outcome(ShardState.CANCELLED, ShardState.CANCELLED, code, "Cancelled", False)
    if code == 0:
        return Outcome(ShardState.SUCCEEDED, ShardState.SUCCEEDED, 0, "Completed", False)
    why = reason or _signal_reason(code)
    if lost:
        return Outcome(ShardState.FAILED, ShardState.PENDING, code, why, False)
    if failures < budget:
        return Outcome(ShardState.FAILED, ShardState.PENDING, code, why, True)
    return Outcome(ShardState.FAILED, ShardState.FAILED, code, why, True)
