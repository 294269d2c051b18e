"""Plans: the per-job parallelism ceiling, the org concurrent-shard budget and the
monthly credit of standard compute-seconds. An org may override the last two."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PlanName = Literal["free", "pro", "team", "enterprise"]
PLAN_NAMES: tuple[PlanName, ...] = ("free", "pro", "team", "enterprise")


@dataclass(frozen=True)
class Plan:
    """Limits of one plan tier."""

    name: str
    max_parallelism: int  # shards one job may request
    concurrent_shards: int  # shards running (or reserved) at once across the org
    monthly_credit_seconds: float  # standard compute-seconds free each calendar month


PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        Plan("free", 1, 2, 36_000.0),  # 10 standard hours
        Plan("pro", 256, 256, 360_000.0),  # 100 h
        Plan("team", 256, 1024, 1_800_000.0),  # 500 h
        Plan("enterprise", 256, 4096, 3_600_000.0),  # 1,000 h
    )
}
