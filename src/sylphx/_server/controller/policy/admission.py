"""Admission: the submit-time check that refuses runs that could never fit (the
arithmetic, :class:`~sylphx._core.machines.Resources`, is the core's: executors report
capacity in it too). Ordering and starts live in ``queue.py``."""

from __future__ import annotations

from sylphx._core.errors import Unschedulable
from sylphx._core.machines import CPU_MACHINES, MACHINES, ZERO, Resources

__all__ = ["ZERO", "Resources", "check_cpu_tiers", "check_schedulable"]


def check_cpu_tiers(machine: str, merge_machine: str | None) -> None:
    """Refuse a GPU tier (``machine`` or ``merge.machine``): reserved in the API, not
    admitted yet. Spec-only, so a submit makes it before anything the org's state decides
    (its spend limit's 402 comes after this 422)."""
    for field, tier in (("machine", machine), ("merge.machine", merge_machine)):
        if tier and MACHINES[tier].gpu:
            fix = f"use a CPU tier ({', '.join(CPU_MACHINES)})"
            raise Unschedulable(
                f"{field}: {tier} is reserved in the API, but GPU node pools are not yet"
                f" available, so it cannot be admitted. Fix: {fix}.",
                details=[{"field": field, "rule": "GPU tiers are not admitted yet", "fix": fix}],
            )


def check_schedulable(
    *, machine: str, parallelism: int, gang: bool, total: Resources, field: str = "machine"
) -> None:
    """Refuse at submit a run that could never start on an executor of size ``total``
    (``field``: where the tier was given, ``machine`` or ``merge.machine``)."""
    unit = Resources.of_tier(machine)
    tier_fix = "pick a smaller machine tier"
    if not unit.fits_in(total):
        raise Unschedulable(
            f"{field}: one {machine} shard needs {unit.text()}, but this executor has"
            f" {total.text()} in"
            f" total, so it can never start. Fix: {tier_fix}, or add capacity"
            " (SYLPHX_LOCAL_CPUS / SYLPHX_LOCAL_MEMORY, or a larger cluster).",
            details=[{"field": field, "rule": "shard larger than the executor", "fix": tier_fix}],
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
