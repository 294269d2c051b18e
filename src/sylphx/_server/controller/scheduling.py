"""What the reconciler hands the queue policy each pass, read off the shard counts of
the active runs: candidates, capacity in use, each org's running units, preemptible
attempts (asked for only when a gang waits); and the gang admission deadline
(``admissionTimeoutSeconds`` / ``admissionFallback``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from sylphx._core.machines import MACHINES, ZERO, Resources
from sylphx._core.spec import RunSpec
from sylphx._core.states import RunState, ShardState
from sylphx._server.controller.policy.preemption import Victim
from sylphx._server.store import RunRow
from sylphx._server.store.records import SHARDS, ShardRecord, shard_columns, update_shards

from .policy import queue
from .transitions import transition

_PENDING = select(*shard_columns()).where(  # a merge step waits on: see merging
    SHARDS.c.run_id == bindparam("run_id"),
    SHARDS.c.state == ShardState.PENDING.value,
    SHARDS.c.index >= 0,
)


def decide(
    runs: list[RunRow],
    counts: Mapping[str, Counter[ShardState]],
    *,
    capacity: Resources,
    preemptible: Callable[[], tuple[list[Victim], Resources]],
    preemption_ceiling: int,
    hold: Collection[str] = (),
    restarting: Callable[[], set[str]] = set,
    backing_off: Mapping[str, int] | None = None,
    merges: Mapping[str, tuple[bool, str]] | None = None,
) -> queue.Decision:
    """The queue policy's decision for this pass (``runs`` in submission order, ``counts``
    their shards by state). ``preemptible`` is asked only when a gang run waits. Runs in
    ``hold`` (parked this pass) start nothing, but their live shards hold capacity.
    ``restarting``: the gang runs whose members are being stopped to restart the gang
    (asked only when a gang has shards both live and pending): they start nothing until
    none is left running, then the gang is admitted again as one. ``backing_off``: the
    pending shards of each run still waiting out their ``retryBackoff`` delay. ``merges``:
    the runs' merge steps that are live (True) or may start now (False), with their
    tiers: a live one holds capacity, one that may start is a one-shard candidate (its
    run has no other: every shard has ended)."""
    backing_off, merges = backing_off or {}, merges or {}
    used = ZERO
    org_units: dict[str, float] = defaultdict(float)
    candidates: list[queue.Candidate] = []
    waiting: dict[str, str] = {}
    mixed = [
        run.id
        for run in runs
        if run.gang
        and counts.get(run.id, Counter())[ShardState.PENDING]
        and _live(counts.get(run.id, Counter()))
    ]
    stopping = restarting() if mixed else set()
    for run in runs:
        count = counts.get(run.id, Counter())
        live = _live(count)
        if run.id in stopping:
            waiting[run.id] = (
                f"restarting the gang: a shard was lost; waiting for {live} running shard(s)"
                " to stop, then all are admitted again together"
            )
        if live:
            used = used + Resources.of_tier(run.machine, live)
            org_units[run.org_id] += MACHINES[run.machine].units * live
        merge_live, merge_tier = merges.get(run.id, (False, ""))
        if merge_live:
            used = used + Resources.of_tier(merge_tier)
            org_units[run.org_id] += MACHINES[merge_tier].units
        pending = count[ShardState.PENDING]
        pending -= backing_off.get(run.id, 0)  # retryBackoff: not yet
        stopped = run.cancel_requested_at is not None or run.fail_reason is not None
        if pending > 0 and not stopped and run.id not in {*hold, *stopping}:
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
        elif merge_tier and not merge_live and not stopped and run.id not in hold:
            queued = run.state == RunState.QUEUED
            candidates.append(queue.Candidate(run.id, run.org_id, False, merge_tier, 1, queued))
    if not candidates:
        return queue.Decision(waiting=waiting)
    # gangs go first: when they all fit in what is free, none waits and nothing is
    # preempted, so the running attempts need not be read (single-shard runs are gangs)
    gangs = sum((Resources.of_tier(c.machine, c.pending) for c in candidates if c.gang), ZERO)
    fit = gangs.fits_in(capacity - used)
    victims, coming = ([], ZERO) if fit else preemptible()
    decision = queue.admit(
        candidates,
        free=capacity - used,
        org_units=dict(org_units),
        victims=victims,
        stopping=coming,
        preemption_ceiling=preemption_ceiling,
        total=capacity,
    )
    decision.waiting |= waiting
    return decision


def _live(count: Counter[ShardState]) -> int:
    return count[ShardState.STARTING] + count[ShardState.RUNNING]


def expire_admission(
    s: Session,
    run: RunRow,
    spec: RunSpec,
    now: datetime,
    full: Callable[[], RunSpec] | None = None,
) -> RunSpec:
    """End (or turn opportunistic) a gang run still queued past its admission deadline.

    Returns the spec the run continues with. ``full``: the whole spec, where ``spec`` may
    be a lean one (see :mod:`.specs`): what is stored is made of it."""
    timeout = spec.admission_timeout_seconds
    if run.state != RunState.QUEUED or timeout is None or run.cancel_requested_at is not None:
        return spec
    if now < (run.reopened_at or run.created_at) + timedelta(seconds=timeout):
        return spec
    if spec.admission_fallback == "opportunistic":
        spec = (full() if full is not None else spec).as_opportunistic()
        run.spec, run.gang = spec.to_wire(), False
        run.course = run.message = (
            f"AdmissionTimeout: not admitted as a gang within {timeout}s; continuing as an"
            " opportunistic run"
        )
        return spec
    shards = [ShardRecord(*row) for row in s.execute(_PENDING, {"run_id": run.id})]
    for shard in shards:
        transition(shard, ShardState.FAILED, now)
        shard.reason = f"AdmissionTimeout: not admitted within {timeout}s"
    update_shards(s, shards, ("state", "reason", "ended_at"))
    run.course = run.message = f"AdmissionTimeout: not admitted as a gang within {timeout}s"
    return spec
