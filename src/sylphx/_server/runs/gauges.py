"""What ``/metrics`` reads from the store when it is scraped: runs and shards by state, the
queue, compute-seconds by org and tier.

These are levels, not events: computed from the store at each scrape, in a few aggregate
queries, they are the same whichever API process (``--workers N``) answers, and need no
process to have seen the change happen. The queries stay cheap as history grows: shards
are counted for the runs not yet ended only, compute-seconds from the usage day sums
(one row per org, run, tier and UTC day; see ``tenancy/billing.py``).

Compute-seconds are per-org: operator data, never a tenant's to read (``http/metrics.py``
keeps ``/metrics`` from them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.states import RunState, ShardState
from sylphx._server.store import OrgRow, RunRow, ShardRow
from sylphx._server.store.schema import UsageDayRow

__all__ = ["StoreGauges"]

log = logging.getLogger("sylphx.api")
_ACTIVE = (RunState.QUEUED.value, RunState.RUNNING.value)

_RUNS = select(RunRow.state, func.count()).group_by(RunRow.state)
_SHARDS = (  # the merge step (index -1) is not a shard
    select(ShardRow.state, func.count())
    .join(RunRow, RunRow.id == ShardRow.run_id)
    .where(RunRow.state.in_(_ACTIVE), ShardRow.index >= 0)
    .group_by(ShardRow.state)
)
_QUEUE = select(func.count(), func.min(func.coalesce(RunRow.reopened_at, RunRow.created_at))).where(
    RunRow.state == RunState.QUEUED.value
)
_COMPUTE = (
    select(
        UsageDayRow.org_id,
        OrgRow.name,
        UsageDayRow.machine,
        func.sum(UsageDayRow.compute_seconds),
        func.sum(UsageDayRow.unbilled_seconds),
    )
    .outerjoin(OrgRow, OrgRow.id == UsageDayRow.org_id)
    .group_by(UsageDayRow.org_id, OrgRow.name, UsageDayRow.machine)
)


class StoreGauges:
    """A prometheus-client collector over the store (``reads``: read-only sessions)."""

    def __init__(self, reads: sessionmaker[Session], now: Callable[[], datetime]) -> None:
        self.reads = reads
        self.now = now

    def collect(self) -> Iterator[Metric]:
        """The families below; a store that does not answer gives ``sylphx_store_up 0``
        and none of them (the process's own metrics are still served)."""
        up = GaugeMetricFamily(
            "sylphx_store_up", "Whether the store answered this scrape's queries (1) or not (0)."
        )
        try:
            with self.reads() as s:
                families = list(self._families(s))
        except Exception as exc:  # the scrape still answers: the store's absence is news
            log.warning("/metrics: the store did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, s: Session) -> Iterator[Metric]:
        runs = GaugeMetricFamily("sylphx_runs", "Runs by state.", labels=["state"])
        counted = {state: n for state, n in s.execute(_RUNS)}
        for run_state in RunState:
            runs.add_metric([run_state.value], counted.get(run_state.value, 0))
        yield runs
        shards = GaugeMetricFamily(
            "sylphx_shards", "Shards of the runs not yet ended, by state.", labels=["state"]
        )
        counted = {state: n for state, n in s.execute(_SHARDS)}
        for shard_state in ShardState:
            if shard_state is not ShardState.SKIPPED:  # only a merge step is ever skipped
                shards.add_metric([shard_state.value], counted.get(shard_state.value, 0))
        yield shards
        depth, oldest = s.execute(_QUEUE).one()
        yield GaugeMetricFamily(
            "sylphx_queue_depth", "Runs queued: none of their shards started yet.", value=depth
        )
        age = max((self.now() - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "sylphx_queue_head_age_seconds",
            "How long the longest-queued run has waited since its submit or retry (0: none).",
            value=age,
        )
        compute = CounterMetricFamily(
            "sylphx_compute_seconds",
            "Metered standard compute-seconds of ended attempts, by org, tier and whether"
            " billed (false: windows the platform preempted).",
            labels=["org", "tier", "billed"],
        )
        for org_id, name, tier, billed, unbilled in s.execute(_COMPUTE):
            compute.add_metric([name or org_id, tier, "true"], float(billed or 0.0))
            compute.add_metric([name or org_id, tier, "false"], float(unbilled or 0.0))
        yield compute
