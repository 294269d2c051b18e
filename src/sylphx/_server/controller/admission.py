"""Admission policy: which queued shards start now, given free capacity.

Gang runs (normal priority) are considered before opportunistic ones, each
group first-come first-served. A gang run starts only when all its shards fit
at once; an opportunistic run starts as many pending shards as fit. A gang run
that does not fit stays queued while smaller work behind it may start
(backfill). Everything here is pure: capacity and queue in, decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..._errors import Unschedulable
from ..._machines import MACHINES, format_bytes, format_cpus


@dataclass(frozen=True)
class Resources:
    """CPU in millicores and memory in bytes (integers: no float drift)."""

    millicpu: int
    memory: int

    @classmethod
    def of_tier(cls, machine: str, shards: int = 1) -> Resources:
        tier = MACHINES[machine]
        return cls(round(tier.vcpu * 1000) * shards, tier.memory_bytes * shards)

    @classmethod
    def of_host(cls, cpus: float, memory: int) -> Resources:
        return cls(round(cpus * 1000), memory)

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.millicpu + other.millicpu, self.memory + other.memory)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.millicpu - other.millicpu, self.memory - other.memory)

    def fits_in(self, other: Resources) -> bool:
        return self.millicpu <= other.millicpu and self.memory <= other.memory

    def how_many_fit(self, free: Resources) -> int:
        """How many units of ``self`` fit in ``free``."""
        if self.millicpu <= 0 or self.memory <= 0:
            return 0
        return max(0, min(free.millicpu // self.millicpu, free.memory // self.memory))

    def text(self) -> str:
        return f"{format_cpus(self.millicpu / 1000)} / {format_bytes(max(self.memory, 0))}"


ZERO = Resources(0, 0)


@dataclass(frozen=True)
class Candidate:
    """A run with shards waiting to start."""

    run_id: str
    gang: bool
    machine: str
    pending: int


@dataclass
class Decision:
    """Shards to start per run, and why the rest wait."""

    starts: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)


def admit(candidates: list[Candidate], free: Resources) -> Decision:
    """Decide starts for ``candidates`` (in submission order) within ``free``."""
    decision = Decision()
    ordered = sorted(candidates, key=lambda c: not c.gang)  # stable: FIFO within priority
    for cand in ordered:
        unit = Resources.of_tier(cand.machine)
        if cand.gang:
            need = Resources.of_tier(cand.machine, cand.pending)
            if need.fits_in(free):
                decision.starts[cand.run_id] = cand.pending
                free = free - need
            else:
                decision.waiting[cand.run_id] = (
                    f"waiting for capacity: needs {need.text()} at once"
                    f" ({cand.pending} x {cand.machine}); {_free_text(free)} free"
                )
            continue
        n = min(cand.pending, unit.how_many_fit(free))
        if n:
            decision.starts[cand.run_id] = n
            free = free - Resources.of_tier(cand.machine, n)
        if n < cand.pending:
            decision.waiting[cand.run_id] = (
                f"{cand.pending - n} shard(s) waiting for capacity: each needs {unit.text()};"
                f" {_free_text(free)} free"
            )
    return decision


def _free_text(free: Resources) -> str:
    return Resources(max(free.millicpu, 0), max(free.memory, 0)).text()


def check_schedulable(*, machine: str, parallelism: int, gang: bool, total: Resources) -> None:
    """Refuse at submit a run that could never start on an executor of size ``total``."""
    unit = Resources.of_tier(machine)
    tier_fix = "pick a smaller machine tier"
    if not unit.fits_in(total):
        raise Unschedulable(
            f"one {machine} shard needs {unit.text()}, but this executor has {total.text()} in"
            f" total, so it can never start. Fix: {tier_fix}, or add capacity"
            " (SYLPHX_LOCAL_CPUS / SYLPHX_LOCAL_MEMORY, or a larger cluster).",
            details=[
                {"field": "machine", "rule": "shard larger than the executor", "fix": tier_fix}
            ],
        )
    if not gang:
        return
    need = Resources.of_tier(machine, parallelism)
    if need.fits_in(total):
        return
    max_n = unit.how_many_fit(total)
    fix = (
        f"reduce parallelism to <= {max_n}, {tier_fix}, set gangScheduling: false"
        " (CLI: --opportunistic) to start shards as capacity frees, or add capacity"
    )
    raise Unschedulable(
        f"gang run needs {need.text()} at once ({parallelism} x {machine}), but this executor"
        f" has {total.text()} in total, so it could never be admitted. Fix: {fix}.",
        details=[{"field": "parallelism", "rule": "gang larger than the executor", "fix": fix}],
    )
