"""The Ray executor's small parts: a tier as Ray resources, a gang's placement group,
and the Exit of a finished task."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sylphx._core.machines import MACHINES
from sylphx._server.executors.base import Exit


def tier_resources(machine: str) -> dict[str, float]:
    """A tier as Ray resources: CPU (fractional) and memory in bytes."""
    tier = MACHINES[machine]
    return {"CPU": tier.vcpu, "memory": float(tier.memory_bytes)}


@dataclass
class Gang:
    pg: Any
    size: int
    machine: str
    ready_ref: Any
    asked: float
    ready: bool = False
    next_bundle: int = 0
    live: int = 0


def result_exit(handle: str, result: Any, now: datetime) -> Exit:
    """The Exit of a finished ``run_shard``: (code, reason, streams that hit the log cap,
    when the process started and when the task ended, epoch seconds, on the node)."""
    code, reason, cut, started, ended = result
    return Exit.recorded(
        handle,
        int(code),
        _utc(ended) if ended is not None else now,
        reason,
        started_at=_utc(started) if started is not None else None,
        log_truncated=tuple(cut),
    )


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
