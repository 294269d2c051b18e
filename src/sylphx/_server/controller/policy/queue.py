"""Queue policy: the order runs are admitted in, and what starts now.

1. Priority: gang runs (normal) before opportunistic runs (low priority).
2. Within a priority, fair share between orgs: the org holding fewer running
   shard-units (machine units of its live shards) goes first; then first come,
   first served.
3. A gang run starts only when all its shards fit at once. The first gang run that
   does not fit what is free, but would fit the whole of the current capacity, holds
   the head of the queue: nothing behind it starts (no backfill onto capacity it is
   waiting for), so a stream of small runs cannot starve it. If stopping opportunistic
   shards would make it fit, those are preempted. A gang that does not fit even the
   whole current capacity (nodes were lost since it was accepted) waits aside, holding
   nothing up, until nodes come back or its admission deadline passes: a queue never
   jams behind a run that cannot start.
4. Opportunistic runs start as many pending shards as fit.
Pure: queue, capacity and usage in, decisions out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sylphx._core.machines import MACHINES, Resources

from .preemption import Victim, choose


@dataclass(frozen=True)
class Candidate:
    """A run with shards waiting to start."""

    run_id: str
    org_id: str
    gang: bool
    machine: str
    pending: int
    queued: bool = True  # still in the queue (not yet running)


@dataclass
class Decision:
    """Shards to start per run, attempts to preempt, and why and where the rest wait."""

    starts: dict[str, int] = field(default_factory=dict)
    preempt: list[Victim] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)  # 1 = next in line


def _text(r: Resources) -> str:
    return Resources(max(r.millicpu, 0), max(r.memory, 0)).text()


def admit(
    candidates: list[Candidate],
    *,
    free: Resources,
    org_units: dict[str, float],
    victims: list[Victim] | None = None,
    stopping: Resources | None = None,
    preemption_ceiling: int = 10,
    total: Resources | None = None,
) -> Decision:
    """Decide starts for ``candidates`` (given in submission order).

    ``org_units``: machine units each org's live shards hold now. ``victims``: running
    opportunistic attempts that may be preempted; ``stopping``: capacity held by
    attempts already asked to stop for a preemption (it is on its way back). ``total``:
    the whole capacity there is now (alive nodes), used or not; None: unknown.
    """
    decision = Decision()
    units: dict[str, float] = defaultdict(float, org_units)
    order = {c.run_id: i for i, c in enumerate(candidates)}
    remaining = list(candidates)
    head: Candidate | None = None
    ahead = 0
    while remaining:
        # next: gang first, then the org with the fewest running units, then FIFO
        cand = min(remaining, key=lambda c: (not c.gang, units[c.org_id], order[c.run_id]))
        remaining.remove(cand)
        unit = Resources.of_tier(cand.machine)
        if head is not None:
            decision.waiting[cand.run_id] = (
                f"waiting behind {head.run_id}, which holds the head of the queue;"
                f" {ahead} run(s) ahead"
            )
            decision.positions[cand.run_id] = ahead + 1
            ahead += 1
            continue
        if cand.gang:
            need = Resources.of_tier(cand.machine, cand.pending)
            if need.fits_in(free):
                decision.starts[cand.run_id] = cand.pending
                free = free - need
                units[cand.org_id] += MACHINES[cand.machine].units * cand.pending
                continue
            if total is not None and not need.fits_in(total):
                decision.waiting[cand.run_id] = (
                    f"waiting for nodes: needs {need.text()} at once ({cand.pending} x"
                    f" {cand.machine}); the cluster has {_text(total)} in all now; it waits"
                    " aside until nodes join or its admission deadline passes"
                )
                continue
            head = cand
            message = (
                f"waiting for capacity: needs {need.text()} at once ({cand.pending} x"
                f" {cand.machine}); {_text(free)} free; {ahead} run(s) ahead"
            )
            on_the_way = stopping or Resources(0, 0)
            if not need.fits_in(free + on_the_way):
                chosen = choose(
                    victims or [], need=need, free=free + on_the_way, ceiling=preemption_ceiling
                )
                if chosen:
                    decision.preempt = chosen
                    message += f"; preempting {len(chosen)} opportunistic shard(s) to make room"
            elif on_the_way.millicpu or on_the_way.memory:
                message += "; opportunistic shards are stopping to make room"
            decision.waiting[cand.run_id] = message
            decision.positions[cand.run_id] = ahead + 1
            ahead += 1
            continue
        n = min(cand.pending, unit.how_many_fit(free))
        if n:
            decision.starts[cand.run_id] = n
            free = free - Resources.of_tier(cand.machine, n)
            units[cand.org_id] += MACHINES[cand.machine].units * n
        if n < cand.pending:
            decision.waiting[cand.run_id] = (
                f"{cand.pending - n} shard(s) waiting for capacity: each needs {unit.text()};"
                f" {_text(free)} free"
            )
            if cand.queued and not n:
                decision.positions[cand.run_id] = ahead + 1
                ahead += 1
    return decision
