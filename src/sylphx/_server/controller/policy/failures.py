"""Failure limit policy: ``maxFailedIndexes`` (Kubernetes' name and meaning). Once more
indices than that have failed for good, the run is failed: its live shards are stopped
(grace as for a cancel), its pending ones are not started, and it ends ``failed``."""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from sylphx._core.spec import RunSpec
from sylphx._core.states import ShardState


class Failable(Protocol):
    fail_reason: str | None


def past_limit(spec: RunSpec, counts: Counter[ShardState]) -> str | None:
    """Why the run fails, when more of its indices failed for good (failed or timed out)
    than ``maxFailedIndexes`` allows; else None."""
    limit = spec.max_failed_indexes
    failed = counts[ShardState.FAILED] + counts[ShardState.TIMED_OUT]
    if limit is None or failed <= limit:
        return None
    return f"MaxFailedIndexes: {failed} indices failed, more than maxFailedIndexes ({limit})"


def fail_run_past_limit(run: Failable, spec: RunSpec, counts: Counter[ShardState]) -> None:
    """Mark ``run`` failed when it is :func:`past_limit` (the reconciler stops the rest)."""
    if run.fail_reason is None and (reason := past_limit(spec, counts)) is not None:
        run.fail_reason = reason  # (only a change is set: a set marks the row for flush)
