"""A run's spend cap (spec ``maxComputeSeconds``): every pass meters each capped run --
its ended attempts plus the open windows of its live ones -- and once that reaches the
cap, the run is stopped as a cancel is (its live shards get SIGTERM, then SIGKILL after
the grace; its pending ones never start) and ends ``cancelled``, its message saying
``SpendCapReached`` with the figures.

Billing stops when each process dies, so a run may go past its cap by at most
``(reconcile interval + kill grace) x live shards x machine units`` compute-seconds."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from sylphx._core.merge import MERGE_INDEX
from sylphx._core.spec import RunSpec
from sylphx._core.states import ShardState
from sylphx._server.store import RunRow, ShardRow
from sylphx._server.tenancy import billing

SPEND_CAP = "SpendCapReached"


def check(s: Session, run: RunRow, spec: RunSpec, now: datetime) -> float | None:
    """Stop the run if its compute-seconds reached its cap; returns them (None: no cap, or
    already stopping)."""
    cap = spec.max_compute_seconds
    if cap is None or run.cancel_requested_at is not None:
        return None
    used, _ = billing.run_usage(s, run.id, _tier(s, run, spec), now)
    if used < cap:
        return used
    run.cancel_requested_at = now
    run.course = (
        f"{SPEND_CAP}: it used {used:,.1f} compute-s, reaching its maxComputeSeconds of"
        f" {cap:,g}; its running shards were stopped and its pending ones cancelled"
    )
    return used


def _tier(s: Session, run: RunRow, spec: RunSpec) -> str:
    """The tier its live attempts are metered at: its merge step's while that runs."""
    if spec.merge is None:
        return run.machine
    state = s.scalar(
        select(ShardRow.state).where(ShardRow.run_id == run.id, ShardRow.index == MERGE_INDEX)
    )
    live = state is not None and ShardState(state).live
    return (spec.merge.machine or run.machine) if live else run.machine
