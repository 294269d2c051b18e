"""Success policy: how shard outcomes roll up into one aggregate run status.

The rule, in order:
1. every index succeeded            -> succeeded
2. the user cancelled the run       -> cancelled
2b. its failure policy failed it     -> failed (FailRun, more than maxFailedIndexes)
3. no index succeeded               -> timed_out if every unsuccessful shard timed out, else failed
4. otherwise                        -> partial
5. with a merge step (spec ``merge``): the run waits for it; a merge that failed or timed
   out makes the run failed, one cancelled makes it cancelled; one that succeeded or was
   skipped leaves the status above.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sylphx._core.indexes import compress
from sylphx._core.states import RunState, ShardState
from sylphx._core.views import Aggregate


def count_states(states: Iterable[str]) -> Counter[ShardState]:
    return Counter(ShardState(s) for s in states)


def final_status(
    counts: Counter[ShardState], *, cancel_requested: bool, run_failed: bool = False
) -> RunState | None:
    """The run's terminal status, or None while any shard is not terminal. ``run_failed``:
    its failure policy failed it (failurePolicy FailRun, maxFailedIndexes)."""
    total = sum(counts.values())
    if total == 0 or any(not state.terminal for state in counts.elements()):
        return None
    succeeded = counts[ShardState.SUCCEEDED]
    if succeeded == total:
        return RunState.SUCCEEDED
    if cancel_requested:
        return RunState.CANCELLED
    if run_failed:
        return RunState.FAILED
    if succeeded == 0:
        timed_out = counts[ShardState.TIMED_OUT]
        return RunState.TIMED_OUT if timed_out == total else RunState.FAILED
    return RunState.PARTIAL


def with_merge(final: RunState | None, merge: ShardState | None) -> RunState | None:
    """The run's status (rule 5) once its merge step (``merge``: its state, None when
    the run has none) is counted: None while the step has not ended."""
    if final is None or merge is None:
        return final
    if not merge.terminal:
        return None
    if merge in (ShardState.SUCCEEDED, ShardState.SKIPPED) or final is RunState.CANCELLED:
        return final
    if merge is ShardState.CANCELLED:  # stopped with its run (a cancel, a failure policy)
        return final if final is not RunState.SUCCEEDED else RunState.CANCELLED
    return RunState.FAILED


def aggregate(status: RunState, counts: Counter[ShardState]) -> Aggregate:
    """The wire aggregate for a run in ``status`` whose shards are in ``counts``."""
    return Aggregate(
        status=status,
        succeeded=counts[ShardState.SUCCEEDED],
        failed=counts[ShardState.FAILED],
        timed_out=counts[ShardState.TIMED_OUT],
        cancelled=counts[ShardState.CANCELLED],
        running=counts[ShardState.RUNNING] + counts[ShardState.STARTING],
        pending=counts[ShardState.PENDING],
        total=sum(counts.values()),
    )


def summary(states: Sequence[tuple[int, str]], counts: Counter[ShardState]) -> str | None:
    """How an unsuccessful run ended, e.g. ``5/9 succeeded; failed: 1,3; timed_out: 7``
    (``states``: each shard's index and state)."""
    if all(state == ShardState.SUCCEEDED for _, state in states):
        return None
    parts = []
    for wanted in (ShardState.FAILED, ShardState.TIMED_OUT, ShardState.CANCELLED):
        idx = [index for index, state in states if state == wanted]
        if idx:
            parts.append(f"{wanted.value}: {compress(idx)}")
    return f"{counts[ShardState.SUCCEEDED]}/{len(states)} succeeded; " + "; ".join(parts)
