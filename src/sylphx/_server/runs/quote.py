"""A quote before a submit (``POST /v1/runs?dryRun=true``): the spec validated and every
admission check a submit runs -- the org's spend limit, the plan's per-job ceiling and
concurrent-shard budget, whether it could ever fit, its secrets and volumes (the image
policy is checked before, by the facade) -- without storing or reserving anything; then
whether it would start now, what it can cost at most, what it is likely to cost from the
org's history, and how much of that the month's remaining credit covers."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sylphx._core.errors import SylphxError
from sylphx._core.machines import MACHINES, ZERO, Resources
from sylphx._core.spec import RunSpec
from sylphx._core.states import RunState, ShardState
from sylphx._core.views import ErrorBody, Quote
from sylphx._server.store import OrgRow, RunRow, ShardRow
from sylphx._server.tenancy import billing, spend
from sylphx._settings import Settings

from .service import admit

HISTORY_RUNS = 20  # recent ended runs of the same command and tier an estimate uses
_SCANNED = 200  # recent ended runs of the org looked through for them
_LIVE = [ShardState.STARTING.value, ShardState.RUNNING.value]


def quote(
    s: Session,
    spec: RunSpec,
    org: OrgRow,
    *,
    capacity: Resources,
    now: datetime,
    settings: Settings,
    refused: SylphxError | None = None,
) -> Quote:
    """The quote of ``spec`` for ``org`` (``refused``: what the checks before this one
    refused it for). Reads only."""
    if refused is None:
        refused = _refusal(s, spec, org, capacity, now)
    if refused is not None:
        verdict, reason = "refused", refused.message
    else:
        verdict, reason = _starts(s, spec, capacity)
    ceiling, retried = _ceilings(spec, settings)
    median, runs = _median_shard_seconds(s, org.id, spec)
    expected = None if median is None else round(_units(spec) * spec.parallelism * median, 3)
    month = billing.report(s, org, spend.month_start(now), now)
    remaining = max(month.monthly_credit_seconds - month.compute_seconds, 0.0)
    return Quote(
        verdict=verdict,
        reason=reason,
        error=ErrorBody.model_validate(refused.to_body()) if refused else None,
        spec=spec,
        ceiling_compute_seconds=ceiling,
        retries_ceiling_compute_seconds=retried,
        expected_compute_seconds=expected,
        median_shard_seconds=None if median is None else round(median, 3),
        based_on_runs=runs,
        monthly_credit_seconds=month.monthly_credit_seconds,
        credit_remaining_seconds=round(remaining, 3),
        billable_ceiling_seconds=_past(ceiling, remaining),
        billable_expected_seconds=None
        if expected is None
        else round(max(expected - remaining, 0.0), 3),
    )


def _past(amount: float, credit: float) -> float:
    return round(max(amount - credit, 0.0), 3)


def _refusal(
    s: Session, spec: RunSpec, org: OrgRow, capacity: Resources, now: datetime
) -> SylphxError | None:
    """The error a submit of ``spec`` would be refused with now, if any."""
    try:
        admit(s, spec, org, capacity=capacity, now=now)
    except SylphxError as exc:
        return exc
    return None


def _starts(s: Session, spec: RunSpec, capacity: Resources) -> tuple[str, str]:
    """("startsNow" | "wouldQueue", why): what is free now and what is queued ahead."""
    used = ZERO
    live = s.execute(
        select(RunRow.machine, func.count())
        .join(ShardRow, ShardRow.run_id == RunRow.id)
        .where(ShardRow.state.in_(_LIVE))
        .group_by(RunRow.machine)
    )
    for machine, n in live:
        used = used + Resources.of_tier(machine, n)
    free = capacity - used
    ahead = s.scalar(select(func.count()).where(RunRow.state == RunState.QUEUED.value)) or 0
    unit = Resources.of_tier(spec.machine)
    need = Resources.of_tier(spec.machine, spec.parallelism) if spec.gang else unit
    free_text = Resources(max(free.millicpu, 0), max(free.memory, 0)).text()
    if ahead == 0 and need.fits_in(free):
        if spec.gang:
            return "startsNow", f"all {spec.parallelism} shards fit now ({free_text} free)"
        n = min(spec.parallelism, unit.how_many_fit(free))
        return "startsNow", (
            f"{n} of {spec.parallelism} shards start now ({free_text} free); the rest as"
            " capacity frees"
        )
    what = f"needs {need.text()}" + (" at once" if spec.gang else " for its first shard")
    return "wouldQueue", f"{what}; {free_text} free; {ahead} run(s) queued ahead"


def _units(spec: RunSpec) -> float:
    return MACHINES[spec.machine].units


def _ceilings(spec: RunSpec, settings: Settings) -> tuple[float, float]:
    """(every shard, and the merge step, for its whole timeout once; the same for every
    attempt an index may make: its retry budget and the retries Ignore rules allow), each
    at most the spend cap plus its overshoot bound. Preempted windows are not billed."""
    once = spec.parallelism * spec.timeout_seconds * _units(spec)
    attempts = spec.retry_budget + 1
    if any(rule.action == "Ignore" for rule in spec.failure_policy):
        attempts += settings.max_preemptions_per_index
    retried = once * attempts
    if spec.merge is not None:
        merge = spec.for_index(-1)
        step = merge.timeout_seconds * _units(merge)
        once, retried = once + step, retried + step * (merge.retry_budget + 1)
    if spec.max_compute_seconds is not None:
        stop = settings.reconcile_interval + settings.kill_grace_seconds
        cap = spec.max_compute_seconds + stop * spec.parallelism * _units(spec)
        once, retried = min(once, cap), min(retried, cap)
    return round(once, 3), round(retried, 3)


def _median_shard_seconds(s: Session, org_id: str, spec: RunSpec) -> tuple[float | None, int]:
    """The median duration of the succeeded shards of the org's recent ended runs with
    the same command and tier, and how many runs it is based on."""
    recent = s.execute(
        select(RunRow.id, RunRow.spec)
        .where(
            RunRow.org_id == org_id, RunRow.machine == spec.machine, RunRow.ended_at.is_not(None)
        )
        .order_by(RunRow.ended_at.desc())
        .limit(_SCANNED)
    )
    same = [run_id for run_id, stored in recent if stored.get("command") == spec.command]
    same = same[:HISTORY_RUNS]
    if not same:
        return None, 0
    rows = s.execute(
        select(ShardRow.run_id, ShardRow.started_at, ShardRow.ended_at).where(
            ShardRow.run_id.in_(same),
            ShardRow.index >= 0,
            ShardRow.state == ShardState.SUCCEEDED.value,
        )
    ).all()
    durations = [(end - start).total_seconds() for _, start, end in rows if start and end]
    if not durations:
        return None, 0
    return statistics.median(durations), len(Counter(run_id for run_id, _, _ in rows))
