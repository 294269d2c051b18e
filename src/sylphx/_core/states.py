"""Shard and run states, and the one table of legal transitions between them."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AttemptState", "RunState", "ShardState", "StopCause"]


class ShardState(StrEnum):
    """Lifecycle of one shard (one index of a run)."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a merge step whose ``when`` did not hold (never a shard)

    @property
    def terminal(self) -> bool:
        return self in SHARD_TERMINAL

    @property
    def live(self) -> bool:
        """Holds capacity: a process has been or is being launched."""
        return self in (ShardState.STARTING, ShardState.RUNNING)


class AttemptState(StrEnum):
    """How one attempt at a shard went. ``preempted``: stopped by the scheduler to make
    room for higher-priority work (or its node was lost); it never uses retry budget."""

    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"

    @property
    def terminal(self) -> bool:
        return self in ATTEMPT_TERMINAL


class StopCause(StrEnum):
    """Why the control plane asked a live attempt to stop (stored on the attempt before
    the signal goes out; its exit is then classified by it, see ``policy/backoff``)."""

    TIMEOUT = "timeout"  # it ran past the spec's timeoutSeconds
    CANCEL = "cancel"  # its run was cancelled
    PREEMPT = "preempt"  # the scheduler needs its capacity for a gang run
    GANG_RESTART = "gang_restart"  # a sibling in its gang was lost: the gang restarts whole
    FAIL_RUN = "fail_run"  # its run failed (failurePolicy FailRun, maxFailedIndexes)


class RunState(StrEnum):
    """Lifecycle of a run: queued -> running -> one terminal aggregate status."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in RUN_TERMINAL


SHARD_TERMINAL = frozenset(
    {
        ShardState.SUCCEEDED,
        ShardState.FAILED,
        ShardState.TIMED_OUT,
        ShardState.CANCELLED,
        ShardState.SKIPPED,
    }
)
ATTEMPT_TERMINAL = frozenset(
    {
        AttemptState.SUCCEEDED,
        AttemptState.FAILED,
        AttemptState.TIMED_OUT,
        AttemptState.CANCELLED,
        AttemptState.PREEMPTED,
    }
)
RUN_TERMINAL = frozenset(
    {RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
)

# The whole state machine. Anything not listed raises IllegalTransition.
SHARD_TRANSITIONS: dict[ShardState, frozenset[ShardState]] = {
    # pending -> failed: never admitted before the run's admission deadline;
    # pending -> skipped: a merge step whose ``when`` did not hold
    ShardState.PENDING: frozenset(
        {ShardState.STARTING, ShardState.CANCELLED, ShardState.FAILED, ShardState.SKIPPED}
    ),
    # starting -> pending|failed: the launch itself failed (retry while budget remains)
    ShardState.STARTING: frozenset(
        {ShardState.RUNNING, ShardState.PENDING, ShardState.FAILED, ShardState.CANCELLED}
    ),
    # running -> pending: the attempt failed and the index has retry budget left
    ShardState.RUNNING: frozenset(
        {
            ShardState.SUCCEEDED,
            ShardState.FAILED,
            ShardState.TIMED_OUT,
            ShardState.CANCELLED,
            ShardState.PENDING,
        }
    ),
    ShardState.SUCCEEDED: frozenset(),
    ShardState.FAILED: frozenset(),
    ShardState.TIMED_OUT: frozenset(),
    ShardState.CANCELLED: frozenset(),
    ShardState.SKIPPED: frozenset(),
}

# An attempt is one process: it starts once and ends once. starting -> ended: the
# launch failed, or it ended before the control plane saw it running.
ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    AttemptState.STARTING: frozenset({AttemptState.RUNNING, *ATTEMPT_TERMINAL}),
    AttemptState.RUNNING: ATTEMPT_TERMINAL,
    **{state: frozenset() for state in ATTEMPT_TERMINAL},
}

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}),
    RunState.RUNNING: RUN_TERMINAL,
    **{state: frozenset() for state in RUN_TERMINAL},
}

# Reopening (``POST /v1/runs/{id}/retry``): the one way out of a terminal state, taken
# only by a retry, never by the reconciler. A run that did not succeed goes back to the
# queue; each index retried goes back to pending (a succeeded one never does).
RUN_REOPEN: dict[RunState, RunState] = {
    state: RunState.QUEUED for state in RUN_TERMINAL if state is not RunState.SUCCEEDED
}
SHARD_REOPEN: dict[ShardState, ShardState] = {
    state: ShardState.PENDING
    for state in SHARD_TERMINAL
    if state not in (ShardState.SUCCEEDED, ShardState.SKIPPED)
}
# The merge step runs again after every retry, however it ended.
MERGE_REOPEN: dict[ShardState, ShardState] = dict.fromkeys(SHARD_TERMINAL, ShardState.PENDING)
