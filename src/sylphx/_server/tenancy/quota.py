"""Quota policy: the two plan budgets the spec page names, checked at submit.

1. per-job parallelism: the most shards one run may request;
2. org concurrent shards: shards reserved (pending or live) across all the org's runs.
A run reserves ``parallelism`` units when accepted; each shard gives its unit back
when it reaches a terminal state (so usage is simply the count of unfinished shards).
"""

from __future__ import annotations

from sylphx._core.errors import QuotaExceeded

from .plans import PLAN_NAMES, Plan

RETRY_AFTER_SECONDS = 30


def check(plan: Plan, *, org: str, in_use: int, requested: int) -> None:
    """Raise QuotaExceeded (HTTP 429) naming the limit, the usage, the ask and the ways out."""
    upgrades = [p for p in PLAN_NAMES if PLAN_NAMES.index(p) > PLAN_NAMES.index(plan.name)]
    upgrade = f"upgrade the plan ({', '.join(upgrades)})" if upgrades else "ask for a higher budget"
    if requested > plan.max_parallelism:
        fix = f"reduce parallelism to <= {plan.max_parallelism}, or {upgrade}"
        raise QuotaExceeded(
            f"parallelism {requested} exceeds the {plan.name} plan's per-job ceiling of"
            f" {plan.max_parallelism} shard(s). Fix: {fix}.",
            details=[
                {
                    "field": "parallelism",
                    "limit": "perJobParallelism",
                    "max": plan.max_parallelism,
                    "current": 0,
                    "requested": requested,
                    "rule": f"at most {plan.max_parallelism} shard(s) per job on {plan.name}",
                    "fix": fix,
                }
            ],
        )
    budget = plan.concurrent_shards
    if in_use + requested > budget:
        free = max(budget - in_use, 0)
        must_finish = in_use + requested - budget
        ways = []
        if free > 0:
            ways.append(f"reduce parallelism to <= {free}")
        if requested <= budget:
            ways.append(f"wait for {must_finish} running shard(s) to finish")
        ways.append(upgrade)
        fix = ", ".join(ways[:-1]) + (", or " if len(ways) > 1 else "") + ways[-1]
        raise QuotaExceeded(
            f"org {org} has {in_use} of its {budget} concurrent shards in use ({free} free) and"
            f" this run asks for {requested}. Fix: {fix}.",
            details=[
                {
                    "field": "parallelism",
                    "limit": "orgConcurrentShards",
                    "max": budget,
                    "current": in_use,
                    "requested": requested,
                    "rule": f"at most {budget} shards at once across the org",
                    "fix": fix,
                }
            ],
            retry_after=RETRY_AFTER_SECONDS if requested <= budget else None,
        )
