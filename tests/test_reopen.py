"""The reopen transition (a retry of an ended run): the one way out of a terminal state,
table-driven for every run and shard state."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sylphx._core.errors import IllegalTransition
from sylphx._core.states import RUN_REOPEN, SHARD_REOPEN, RunState, ShardState
from sylphx._server.controller.transitions import reopen, transition
from sylphx._server.store import RunRow, ShardRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def _run(state: RunState) -> RunRow:
    return RunRow(
        id="wrk_x", state=state.value, started_at=T0, ended_at=T0, cancel_requested_at=T0,
        message="1/2 succeeded; failed: 1", course="AdmissionTimeout", reopened=0,
    )  # fmt: skip


def _shard(state: ShardState) -> ShardRow:
    return ShardRow(
        run_id="wrk_x", index=3, state=state.value, attempts=2, failures=2, preemptions=1,
        exit_code=3, reason="Error", started_at=T0, ended_at=T0,
    )  # fmt: skip


@pytest.mark.parametrize("state", list(RunState))
def test_only_an_ended_unsuccessful_run_reopens_and_it_goes_back_to_the_queue(
    state: RunState,
) -> None:
    run = _run(state)
    if state.terminal and state is not RunState.SUCCEEDED:
        assert RUN_REOPEN[state] is RunState.QUEUED
        reopen(run, T1)
        assert run.state == "queued" and run.reopened == 1 and run.reopened_at == T1
        assert run.ended_at is run.cancel_requested_at is run.message is run.course is None
        assert run.started_at == T0  # when it first started
        reopen_again = _run(RunState.FAILED)
        reopen_again.reopened = 4
        reopen(reopen_again, T1)
        assert reopen_again.reopened == 5
    else:
        assert state not in RUN_REOPEN
        with pytest.raises(IllegalTransition, match=f"{state.value} -> queued"):
            reopen(run, T1)
        assert run.state == state.value and run.reopened == 0


@pytest.mark.parametrize("state", list(ShardState))
def test_only_an_unsuccessful_ended_shard_reopens_with_a_fresh_budget(state: ShardState) -> None:
    shard = _shard(state)
    if state in (ShardState.FAILED, ShardState.TIMED_OUT, ShardState.CANCELLED):
        assert SHARD_REOPEN[state] is ShardState.PENDING
        reopen(shard, T1)
        assert shard.state == "pending" and shard.failures == 0
        assert shard.attempts == 2 and shard.preemptions == 1  # numbering goes on
        assert shard.exit_code is shard.reason is shard.started_at is shard.ended_at is None
        transition(shard, ShardState.STARTING, T1)  # and on as any pending shard
        assert shard.started_at == T1
    else:
        with pytest.raises(IllegalTransition, match=f"{state.value} -> pending"):
            reopen(shard, T1)
        assert shard.state == state.value


def test_the_reconciler_cannot_take_a_terminal_state_out_by_itself() -> None:
    for state in (ShardState.FAILED, ShardState.CANCELLED, ShardState.TIMED_OUT):
        with pytest.raises(IllegalTransition):
            transition(_shard(state), ShardState.PENDING, T1)
    for run_state in (RunState.FAILED, RunState.PARTIAL):
        with pytest.raises(IllegalTransition):
            transition(_run(run_state), RunState.QUEUED, T1)
