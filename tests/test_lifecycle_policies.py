"""Failure policies in the reconciler, table-driven with the stub executor and a manual
clock (issue #20 item 3): retryBackoff timing, each failurePolicy action, and
maxFailedIndexes. The same with real processes: test_failure_policies_run."""

# ruff: noqa: F811 (the fixture ``h`` is test_reconciler's)
from __future__ import annotations

import pytest
from sqlalchemy import select

from sylphx._core.machines import Resources
from sylphx._core.states import StopCause
from sylphx._server.store import AttemptRow
from test_reconciler import Harness, h  # noqa: F401

EXIT = {"operator": "In", "values": [42]}


def statuses(h: Harness, run_id: str) -> list[str]:
    return [s["status"] for s in h.run(run_id)["shards"]]


def test_a_failed_index_waits_its_backoff_doubling_to_the_cap(h: Harness) -> None:
    run_id = h.submit(
        parallelism=2, gangScheduling=False, backoffLimitPerIndex=4, machine="nano",
        retryBackoff={"initialSeconds": 10, "factor": 2, "maxSeconds": 25},
    )  # fmt: skip
    h.tick()
    starts = []
    for delay in (10, 20, 25, 25):  # 10, doubled, then held at the cap
        h.executor.finish(0, 1)
        h.tick()  # settled: pending until its retry time
        shard = h.run(run_id)["shards"][0]
        assert shard["status"] == "pending" and shard["retryAt"] is not None
        h.tick(delay - 0.5)
        assert statuses(h, run_id)[0] == "pending"  # not a moment early
        assert "1 in retryBackoff" in h.run(run_id)["message"]
        h.tick(0.5)
        assert statuses(h, run_id)[0] == "running"
        assert h.run(run_id)["shards"][0]["retryAt"] is None
        starts.append(h.clock())
    assert h.run(run_id)["shards"][0]["attempts"] == 5


def test_a_preempted_or_lost_index_is_retried_at_once(h: Harness) -> None:
    run_id = h.submit(parallelism=2, gangScheduling=False, machine="nano")
    h.tick()
    h.executor.lose(0)
    h.tick()
    h.tick()
    assert statuses(h, run_id)[0] == "running"


@pytest.mark.parametrize(
    ("action", "code", "after"),
    [
        ("FailIndex", 42, ["failed", "running"]),  # no retry, the sibling runs on
        ("FailIndex", 1, ["pending", "running"]),  # another code: counted, retried
        ("Count", 42, ["pending", "running"]),
        ("Ignore", 42, ["pending", "running"]),
    ],
)
def test_failure_policy_actions_on_one_index(
    h: Harness, action: str, code: int, after: list[str]
) -> None:
    run_id = h.submit(
        parallelism=2, gangScheduling=False, backoffLimitPerIndex=1, machine="nano",
        failurePolicy=[{"onExitCodes": EXIT, "action": action}],
    )  # fmt: skip
    h.tick()
    h.executor.finish(0, code)
    h.tick()
    assert statuses(h, run_id) == after
    shard = h.run(run_id)["shards"][0]
    assert shard["history"][0]["exitCode"] == code
    if action == "Ignore":  # the budget is untouched: one more failure is still retried
        h.tick(60)
        h.executor.finish(0, 1)
        h.tick()
        assert statuses(h, run_id)[0] == "pending"


def test_failrun_stops_the_live_shards_cancels_the_pending_and_fails_the_run(
    h: Harness,
) -> None:
    h.executor.resources = Resources.of_host(0.2, 4 << 30)  # room for 2 nano shards
    run_id = h.submit(
        parallelism=4, gangScheduling=False, machine="nano",
        failurePolicy=[{"onExitCodes": EXIT, "action": "FailRun"}],
    )  # fmt: skip
    h.tick()
    assert statuses(h, run_id) == ["running", "running", "pending", "pending"]
    h.executor.finish(0, 42)
    h.tick()  # settled: the run fails
    h.tick()  # its other live shard is asked to stop; the pending ones never start
    with h.sessions() as s:  # why it is stopped, stored before the SIGTERM went out
        stops = s.scalars(select(AttemptRow.stop_reason).where(AttemptRow.run_id == run_id))
        assert sorted(map(str, stops)) == ["None", StopCause.FAIL_RUN.value]
    h.executor.finish(1, 143)  # it ends on SIGTERM
    h.tick()
    view = h.run(run_id)
    assert view["status"] == "failed", view
    assert view["message"].startswith(
        "FailRun: an index ended with exit code 42 (failurePolicy rule 1: FailRun)"
    )
    got = [(s["status"], s["reason"]) for s in view["shards"]]
    assert got[0] == ("failed", "Error (failurePolicy rule 1: FailRun)")
    assert got[1] == ("cancelled", "RunFailed: stopped because its run failed")
    assert got[2:] == [("cancelled", "RunFailed: not started because its run failed")] * 2
    assert [s["attempts"] for s in view["shards"]] == [1, 1, 0, 0]


def test_an_oomkilled_rule_fails_the_run(h: Harness) -> None:
    from sylphx._server.executors.base import Exit

    run_id = h.submit(
        parallelism=2, gangScheduling=False, machine="nano",
        failurePolicy=[{"onReasons": ["OOMKilled"], "action": "FailRun"}],
    )  # fmt: skip
    h.tick()
    (handle,) = [a.handle for a in h.executor._matching(0, run_id)]
    h.executor._end(handle, -9)
    exit = h.executor._unpolled[-1]
    h.executor._unpolled[-1] = Exit(
        exit.handle, exit.returncode, exit.ended_at, reason="OOMKilled: over its memory",
        started_at=exit.started_at,
    )  # fmt: skip
    h.tick()
    h.tick()
    h.executor.finish(1, 143)
    h.tick()
    view = h.run(run_id)
    assert view["status"] == "failed" and "ended with OOMKilled" in view["message"], view


@pytest.mark.parametrize(("limit", "fail", "status"), [(1, 1, "partial"), (1, 2, "failed")])
def test_max_failed_indexes(h: Harness, limit: int, fail: int, status: str) -> None:
    run_id = h.submit(
        parallelism=4, gangScheduling=False, backoffLimitPerIndex=0, machine="nano",
        maxFailedIndexes=limit,
    )  # fmt: skip
    h.tick()
    for index in range(fail):
        h.executor.finish(index, 3)
    h.tick()
    h.tick()
    for index in range(fail, 4):
        h.executor.finish(index, 0 if status == "partial" else 143)
    h.tick()
    view = h.run(run_id)
    assert view["status"] == status, view
    if status == "failed":
        assert view["message"].startswith(
            "MaxFailedIndexes: 2 indices failed, more than maxFailedIndexes (1)"
        )
        assert statuses(h, run_id) == ["failed", "failed", "cancelled", "cancelled"]


def test_a_retry_of_a_failed_run_clears_its_failure(h: Harness) -> None:
    from sylphx._core.retry import RetryRequest
    from sylphx._server.runs.retry import retry
    from sylphx._server.store import OrgRow

    run_id = h.submit(
        parallelism=3, gangScheduling=False, backoffLimitPerIndex=0, machine="nano",
        maxFailedIndexes=0,
    )  # fmt: skip
    h.tick()
    h.executor.finish(0, 3)
    h.tick()
    h.tick()
    h.executor.finish_all(143)
    h.tick()
    assert h.run(run_id)["status"] == "failed"
    with h.sessions.begin() as s:
        org = s.get(OrgRow, "org_acme")
        assert org is not None
        retry(s, run_id, org, RetryRequest(), capacity=h.executor.capacity(), now=h.clock())
    h.tick()
    assert statuses(h, run_id) == ["running"] * 3
    h.executor.finish_all(0)
    h.tick()
    view = h.run(run_id)
    assert view["status"] == "succeeded" and view["message"] is None and view["reopened"] == 1
