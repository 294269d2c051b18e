"""Retrying the unsuccessful indices of an ended run, in the same run (``POST
/v1/runs/{id}/retry``): the run is reopened through the one transition function, the
chosen indices go back to pending with a fresh retry budget, and the queue, the quotas and
admission treat them as a submit of that many shards would be treated. A merge step runs
again once they have ended (a run whose merge alone failed is retried for its merge)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from sylphx._core.errors import ConflictError
from sylphx._core.indexes import compress, of_run
from sylphx._core.machines import Resources
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.retry import RetryRequest
from sylphx._core.spec import RunSpec
from sylphx._core.states import SHARD_REOPEN, RunState, ShardState
from sylphx._server.controller.policy import admission
from sylphx._server.controller.transitions import reopen
from sylphx._server.store import OrgRow, RunRow, ShardRow
from sylphx._server.tenancy import billing, quota, spend
from sylphx._server.tenancy.orgs import limits

from .service import check_references, load, shards_in_use

__all__ = ["retry"]

_MERGE_FAILED = (ShardState.FAILED, ShardState.TIMED_OUT, ShardState.CANCELLED)


def retry(
    s: Session,
    run_id: str,
    org: OrgRow,
    request: RetryRequest,
    *,
    capacity: Resources,
    now: datetime,
    key: str | None = None,
) -> RunRow:
    """Reopen the org's ended run for the indices ``request`` names (default: every one
    that ended failed, timed_out or cancelled). A repeated ``key`` (the Idempotency-Key of
    the retry that reopened it last) answers with the run as it is. Call inside a
    transaction that locked ``org`` (the quota check and the reservation are one step)."""
    run = load(s, run_id, org.id, with_attempts=True, lock=True)
    if key is not None and run.reopen_key == key:
        return run  # this very retry, sent again: it reopened the run once
    if not RunState(run.state).terminal:
        fix = f"wait for it to end (sylphx runs get {run_id} --wait) or cancel it first"
        raise ConflictError(
            f"run {run_id} is {run.state}: only an ended run can be retried. Fix: {fix}.",
            details=[{"field": "status", "rule": "must be terminal", "fix": fix}],
        )
    shards = {shard.index: shard for shard in run.shards if shard.index >= 0}
    step = next((shard for shard in run.shards if shard.index == MERGE_INDEX), None)
    merge_failed = step is not None and ShardState(step.state) in _MERGE_FAILED
    chosen = _chosen(run, request, shards, merge_failed=merge_failed)
    stopping = [i for i in chosen if any(a.ended_at is None for a in shards[i].history)]
    if step is not None and any(a.ended_at is None for a in step.history):
        stopping.append(MERGE_INDEX)
    if stopping:  # a new attempt beside the old process: never
        raise ConflictError(
            f"run {run_id} has ended but index {compress(stopping)} is still being stopped."
            " Fix: retry in a few seconds.",
            details=[{"field": "indices", "rule": "still stopping", "fix": "retry shortly"}],
        )
    spec = RunSpec.from_store(run.spec)
    _check_spend_cap(s, run, spec, now)
    spend.check(s, org, now)  # 402 at the org's monthly limit
    in_use = shards_in_use(s, org.id)
    quota.check(limits(org), org=org.name, in_use=in_use, requested=len(chosen) or 1)
    if chosen:
        admission.check_schedulable(
            machine=run.machine, parallelism=len(chosen), gang=run.gang, total=capacity
        )
    check_references(s, org.id, spec, run_id)
    for index in chosen:
        reopen(shards[index], now)
    if step is not None:  # the merge step runs again, fed the new outcome
        reopen(step, now)
    reopen(run, now)
    run.reopen_key = key
    run.queue_position = None
    return run


def _check_spend_cap(s: Session, run: RunRow, spec: RunSpec, now: datetime) -> None:
    """A run that reached its spend cap would be stopped again at once: a 409."""
    cap = spec.max_compute_seconds
    if cap is None:
        return
    used = billing.run_usage(s, run.id, run.machine, now)[0]
    if used < cap:
        return
    fix = "submit a new run (with a higher maxComputeSeconds if it needs more)"
    raise ConflictError(
        f"run {run.id} used {used:,.1f} compute-s, reaching its maxComputeSeconds of {cap:,g}:"
        f" a retry would be stopped at once. Fix: {fix}.",
        details=[{"field": "maxComputeSeconds", "rule": "reached by the run", "fix": fix}],
    )


def _chosen(
    run: RunRow, request: RetryRequest, shards: dict[int, ShardRow], *, merge_failed: bool
) -> list[int]:
    """The indices to run again (none: only the merge step, which failed), or the 409/422
    that names the one that cannot be."""
    states = {index: ShardState(shard.state) for index, shard in shards.items()}
    if request.indices is None:
        chosen = sorted(i for i, state in states.items() if state in SHARD_REOPEN)
        if not chosen and not merge_failed:
            raise ConflictError(
                f"run {run.id} has no failed, timed_out or cancelled index to retry. Fix:"
                " submit a new run to run it all again.",
                details=[{"field": "indices", "rule": "nothing to retry", "fix": "submit anew"}],
            )
        return chosen
    chosen = of_run(request.indices, run.parallelism, f"run {run.id}")
    done = [i for i in chosen if states[i] is ShardState.SUCCEEDED]
    if done:
        fix = f"drop {compress(done)} from indices; a succeeded index is never run again"
        raise ConflictError(
            f"run {run.id}: index {compress(done)} succeeded: only failed, timed_out or"
            f" cancelled indices can be retried. Fix: {fix}.",
            details=[{"field": "indices", "rule": f"{compress(done)} succeeded", "fix": fix}],
        )
    return chosen
