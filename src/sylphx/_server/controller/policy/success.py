"""Success policy: how shard outcomes roll up into one aggregate run status.

The rule, in order:
1. every index succeeded            -> succeeded
2. the user cancelled the run       -> cancelled
2b. its failure policy failed it     -> failed (FailRun, more than maxFailedIndexes)
3. no index succeeded               -> timed_out if every unsuccessful shard timed out, else failed
4. otherwise                        -> partial
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
