"""What the reconciler hands the queue policy each pass, read off the runs it loaded:
candidates, capacity in use, each org's running units, preemptible attempts; and the
gang admission deadline (``admissionTimeoutSeconds`` / ``admissionFallback``)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from ..._machines import MACHINES
from ..._spec import RunSpec
from ..._states import RunState, ShardState
from ..store import RunRow
from ..transitions import transition
from . import queue
from .admission import ZERO, Resources
from .preemption import Victim

LIVE = (ShardState.STARTING.value, ShardState.RUNNING.value)


def decide(
    runs: list[RunRow], *, capacity: Resources, now: datetime, preemption_ceiling: int
) -> queue.Decision:
    """The queue policy's decision for this pass (``runs`` in submission order)."""
    used = stopping = ZERO
    org_units: dict[str, float] = defaultdict(float)
    victims: list[Victim] = []
    candidates: list[queue.Candidate] = []
    for run in runs:
        pending = 0
        for shard in run.shards:
            if shard.state == ShardState.PENDING:
                pending += 1
            if shard.state not in LIVE:
                continue
            used = used + Resources.of_tier(run.machine)
            org_units[run.org_id] += MACHINES[run.machine].units
            attempt = shard.history[-1] if shard.history else None
            if attempt is None or attempt.ended_at is not None or run.gang:
                continue
            if attempt.stop_reason == "preempt":
                stopping = stopping + Resources.of_tier(run.machine)
            elif attempt.stop_reason is None and attempt.started_at is not None:
                victims.append(
                    Victim(
                        attempt.id,
                        run.machine,
                        (now - attempt.started_at).total_seconds(),
                        shard.preemptions,
                    )
                )
        if pending and run.cancel_requested_at is None:
            candidates.append(
                queue.Candidate(
                    run.id,
                    run.org_id,
                    run.gang,
                    run.machine,
                    pending,
                    queued=run.state == RunState.QUEUED,
                )
            )
    if not candidates:
        return queue.Decision()
    return queue.admit(
        candidates,
        free=capacity - used,
        org_units=dict(org_units),
        victims=victims,
        stopping=stopping,
        preemption_ceiling=preemption_ceiling,
    )


def expire_admission(run: RunRow, spec: RunSpec, now: datetime) -> RunSpec:
    """End (or turn opportunistic) a gang run still queued past its admission deadline.

    Returns the spec the run continues with."""
    timeout = spec.admission_timeout_seconds
    if run.state != RunState.QUEUED or timeout is None or run.cancel_requested_at is not None:
        return spec
    if now < run.created_at + timedelta(seconds=timeout):
        return spec
    if spec.admission_fallback == "opportunistic":
        spec = spec.as_opportunistic()
        run.spec, run.gang = spec.to_wire(), False
        run.message = (
            f"AdmissionTimeout: not admitted as a gang within {timeout}s; continuing as an"
            " opportunistic run"
        )
        return spec
    for shard in run.shards:
        if shard.state == ShardState.PENDING:
            transition(shard, ShardState.FAILED, now)
            shard.reason = f"AdmissionTimeout: not admitted within {timeout}s"
    run.message = f"AdmissionTimeout: not admitted as a gang within {timeout}s"
    return spec
