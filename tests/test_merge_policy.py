"""The merge step's policies, table-driven: when it runs (``when``), how it rolls into the
run's status, the spec it runs with, and its reopening by a retry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sylphx._core.errors import IllegalTransition
from sylphx._core.merge import MERGE_INDEX, MinSucceeded, should_run
from sylphx._core.spec import RunSpec
from sylphx._core.states import RunState as R
from sylphx._core.states import ShardState as S
from sylphx._server.controller.policy.success import with_merge
from sylphx._server.controller.transitions import reopen, transition
from sylphx._server.store import ShardRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("when", "succeeded", "total", "runs"),
    [
        ("allSucceeded", 9, 9, True),
        ("allSucceeded", 8, 9, False),
        ("always", 0, 9, True),
        (MinSucceeded(min_succeeded=7), 7, 9, True),
        (MinSucceeded(min_succeeded=7), 6, 9, False),
    ],
)
def test_when(when: Any, succeeded: int, total: int, runs: bool) -> None:
    assert should_run(when, succeeded, total) is runs


@pytest.mark.parametrize(
    ("shards", "merge", "status"),
    [
        (R.SUCCEEDED, None, R.SUCCEEDED),  # no merge step
        (None, S.PENDING, None),  # shards still running
        (R.SUCCEEDED, S.PENDING, None),  # waiting for the merge
        (R.SUCCEEDED, S.RUNNING, None),
        (R.SUCCEEDED, S.SUCCEEDED, R.SUCCEEDED),
        (R.PARTIAL, S.SUCCEEDED, R.PARTIAL),  # a merge never upgrades the shards' status
        (R.PARTIAL, S.SKIPPED, R.PARTIAL),
        (R.SUCCEEDED, S.FAILED, R.FAILED),
        (R.SUCCEEDED, S.TIMED_OUT, R.FAILED),
        (R.PARTIAL, S.FAILED, R.FAILED),
        (R.SUCCEEDED, S.CANCELLED, R.CANCELLED),  # cancelled while it merged
        (R.CANCELLED, S.CANCELLED, R.CANCELLED),
        (R.FAILED, S.CANCELLED, R.FAILED),  # FailRun / maxFailedIndexes: never started
        (R.CANCELLED, S.FAILED, R.CANCELLED),
    ],
)
def test_the_run_waits_for_its_merge_and_a_failed_merge_fails_it(
    shards: R | None, merge: S | None, status: R | None
) -> None:
    assert with_merge(shards, merge) is status


def test_the_merge_runs_with_its_own_command_tier_env_timeout_and_budget() -> None:
    spec = RunSpec.parse(
        {
            "command": ["python", "part.py"], "parallelism": 8, "machine": "large",
            "env": {"A": "run", "B": "run"}, "timeoutSeconds": 600, "gangScheduling": False,
            "backoffLimitPerIndex": 5, "maxFailedIndexes": 2,
            "failurePolicy": [
                {"onExitCodes": {"operator": "In", "values": [3]}, "action": "FailRun"}
            ],
            "merge": {"command": ["python", "merge.py"], "env": {"B": "merge"}, "backoffLimit": 1},
        }
    )  # fmt: skip
    assert spec.for_index(3) is spec
    merge = spec.for_index(MERGE_INDEX)
    assert merge.command == ["python", "merge.py"] and merge.machine == "large"
    assert merge.env == {"A": "run", "B": "merge"} and merge.timeout_seconds == 600
    assert merge.retry_budget == 1 and merge.failure_policy == [] and not merge.indexed
    assert not merge.gang and merge.max_failed_indexes is None and merge.merge is None
    assert spec.to_wire()["merge"]["machine"] == "large"  # stored filled in
    assert spec.merges(8) and not spec.merges(7)


def _step(state: S) -> ShardRow:
    return ShardRow(run_id="wrk_x", index=MERGE_INDEX, state=state.value, attempts=1)


@pytest.mark.parametrize("state", [s for s in S if s.terminal])
def test_a_retry_reopens_the_merge_however_it_ended(state: S) -> None:
    step = _step(state)
    reopen(step, T0)
    assert step.state == S.PENDING and step.ended_at is None and step.attempts == 1


def test_a_shard_is_never_skipped_and_a_skipped_one_never_reopens_as_a_shard() -> None:
    step = _step(S.PENDING)
    transition(step, S.SKIPPED, T0)
    assert step.ended_at == T0
    shard = ShardRow(run_id="wrk_x", index=0, state=S.SKIPPED.value, attempts=0)
    with pytest.raises(IllegalTransition):
        reopen(shard, T0)
    with pytest.raises(IllegalTransition):
        transition(_step(S.RUNNING), S.SKIPPED, T0)
