"""Admission arithmetic: resources in millicores and bytes, and the submit-time check
that refuses runs that could never fit. Ordering and starts live in ``queue.py``."""

from __future__ import annotations

from dataclasses import dataclass

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
