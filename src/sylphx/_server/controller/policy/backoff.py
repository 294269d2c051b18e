"""Backoff policy: what an ended attempt means for its shard, the run's ``failurePolicy``
rules applied (Kubernetes' ``podFailurePolicy``: the first rule that matches decides)."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

from sylphx._core.failure import FailureAction, FailureRule, rule_for
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
    ignored: bool = False  # retried by an Ignore rule: counts against the same ceiling
    fail_run: str | None = None  # a FailRun rule matched: why the run fails


RUN_FAILED = "RunFailed: stopped because its run failed"
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
    rules: Sequence[FailureRule] = (),
    ignored: int = 0,
) -> Outcome:
    """Classify an exit. ``stop_reason``: the :class:`StopCause` the control plane
    stored before it signalled the attempt, if it did. A preemption (``StopCause.PREEMPT``;
    ``GANG_RESTART``: stopped because a sibling in its gang was lost; or ``lost``: the
    executor lost the attempt, e.g. its node or its supervisor died) retries without using
    the failure budget, up to ``preemption_ceiling`` times per index; a cancel is final.

    A failure (a non-zero exit, ``reason`` naming its cause, e.g. OOMKilled or a
    LaunchError) and a timeout (DeadlineExceeded) go by the first of ``rules`` that
    matches: ``FailIndex`` ends the index, ``FailRun`` the index and the run, ``Ignore``
    retries it without using the budget (at most ``preemption_ceiling`` times; ``ignored``
    so far), ``Count`` retries while ``failures < budget``. With no rule matching, a
    failure counts and a timeout ends the index."""
    code = normalize_exit(returncode)
    stop = StopCause(stop_reason) if stop_reason is not None else None
    if stop is StopCause.CANCEL:
        return Outcome(A.CANCELLED, S.CANCELLED, code, "Cancelled", False)
    if stop is StopCause.FAIL_RUN:
        return Outcome(A.CANCELLED, S.CANCELLED, code, RUN_FAILED, False)
    if stop in (StopCause.PREEMPT, StopCause.GANG_RESTART) or (lost and stop is None):
        why = reason or _PREEMPTED[stop]
        if preemptions < preemption_ceiling:
            return Outcome(A.PREEMPTED, S.PENDING, code, why, False, preempted=True)
        limit = f"PreemptionLimit: preempted {preemptions + 1} times (ceiling {preemption_ceiling})"
        return Outcome(A.PREEMPTED, S.FAILED, code, f"{limit}; last: {why}", False, True)
    if stop is StopCause.TIMEOUT:
        ended, why, default = (A.TIMED_OUT, S.TIMED_OUT), "DeadlineExceeded", "FailIndex"
    elif code == 0:
        return Outcome(A.SUCCEEDED, S.SUCCEEDED, 0, "Completed", False)
    else:
        ended, why, default = (A.FAILED, S.FAILED), reason or _signal_reason(code), "Count"
    matched = rule_for(list(rules), code, why)
    action: FailureAction = matched[1].action if matched else default  # type: ignore[assignment]
    by = f" (failurePolicy rule {matched[0]}: {action})" if matched else ""
    if action == "FailRun":
        kind = why.split(":")[0]
        cause = f"exit code {code}" if kind in ("Error", "Killed by SIGKILL") else kind
        return Outcome(
            *ended, code, why + by, False, fail_run=f"FailRun: an index ended with {cause}{by}"
        )
    if action == "Ignore":
        if ignored < preemption_ceiling:
            return Outcome(ended[0], S.PENDING, code, why + by, False, ignored=True)
        return Outcome(
            *ended, code, f"IgnoreLimit: retried {ignored} times{by}; last: {why}", False
        )
    counts = action == "Count"
    if counts and failures < budget:
        return Outcome(ended[0], S.PENDING, code, why + by, True)
    return Outcome(*ended, code, why + by, counts or ended[0] is A.FAILED)
