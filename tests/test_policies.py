"""Table-driven tests of the pure policies beside the reconciler."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from sylphx._core.errors import IllegalTransition, Unschedulable
from sylphx._core.indexes import compress, expand
from sylphx._core.states import (
    ATTEMPT_TRANSITIONS,
    SHARD_TRANSITIONS,
    AttemptState,
    RunState,
    ShardState,
)
from sylphx._server.controller import deadlines
from sylphx._server.controller.policy import admission, backoff, preemption, queue, success
from sylphx._server.controller.policy.preemption import Victim
from sylphx._server.controller.transitions import transition
from sylphx._server.store import RunRow, ShardRow
from sylphx._server.store.records import AttemptRecord, ShardRecord

S = ShardState
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("states", "cancelled", "expected"),
    [
        ({S.SUCCEEDED: 9}, False, RunState.SUCCEEDED),
        ({S.SUCCEEDED: 9}, True, RunState.SUCCEEDED),  # finished before the cancel landed
        ({S.SUCCEEDED: 5, S.FAILED: 4}, False, RunState.PARTIAL),
        ({S.SUCCEEDED: 1, S.TIMED_OUT: 1}, False, RunState.PARTIAL),
        ({S.FAILED: 3}, False, RunState.FAILED),
        ({S.FAILED: 1, S.TIMED_OUT: 2}, False, RunState.FAILED),
        ({S.TIMED_OUT: 3}, False, RunState.TIMED_OUT),
        ({S.SUCCEEDED: 2, S.CANCELLED: 3}, True, RunState.CANCELLED),
        ({S.CANCELLED: 3}, True, RunState.CANCELLED),
        ({S.SUCCEEDED: 2, S.RUNNING: 1}, False, None),
        ({S.PENDING: 1, S.FAILED: 1}, False, None),
        ({}, False, None),
    ],
)
def test_final_status(states: dict[ShardState, int], cancelled: bool, expected: RunState) -> None:
    assert success.final_status(Counter(states), cancel_requested=cancelled) == expected


def test_aggregate_counts() -> None:
    counts = Counter(
        {
            S.SUCCEEDED: 2,
            S.FAILED: 1,
            S.TIMED_OUT: 1,
            S.CANCELLED: 1,
            S.RUNNING: 2,
            S.STARTING: 1,
            S.PENDING: 3,
        }
    )
    agg = success.aggregate(RunState.RUNNING, counts)
    assert agg.to_wire() == {
        "status": "running",
        "succeeded": 2,
        "failed": 1,
        "timedOut": 1,
        "cancelled": 1,
        "running": 3,
        "pending": 3,
        "total": 11,
    }


@pytest.mark.parametrize(
    ("code", "stop", "failures", "budget", "attempt_state", "shard_state", "exit_code", "used"),
    [
        (0, None, 0, 3, S.SUCCEEDED, S.SUCCEEDED, 0, False),
        (1, None, 0, 3, S.FAILED, S.PENDING, 1, True),  # retry
        (1, None, 2, 3, S.FAILED, S.PENDING, 1, True),
        (1, None, 3, 3, S.FAILED, S.FAILED, 1, True),  # budget exhausted
        (1, None, 0, 0, S.FAILED, S.FAILED, 1, True),  # gang: no retries
        (-9, None, 0, 0, S.FAILED, S.FAILED, 137, True),
        (-15, "timeout", 0, 3, S.TIMED_OUT, S.TIMED_OUT, 143, False),
        (0, "timeout", 0, 3, S.TIMED_OUT, S.TIMED_OUT, 0, False),
        (-15, "cancel", 0, 3, S.CANCELLED, S.CANCELLED, 143, False),
        (-15, "preempt", 3, 3, "preempted", S.PENDING, 143, False),  # budget untouched
    ],
)
def test_backoff(
    code: int,
    stop: str | None,
    failures: int,
    budget: int,
    attempt_state: S,
    shard_state: S,
    exit_code: int,
    used: bool,
) -> None:
    out = backoff.decide(code, stop_reason=stop, failures=failures, budget=budget)
    assert (out.attempt_state, out.shard_state, out.exit_code, out.uses_budget) == (
        attempt_state,
        shard_state,
        exit_code,
        used,
    )


def test_preemption_has_its_own_ceiling() -> None:
    ok = backoff.decide(
        -15, stop_reason="preempt", failures=0, budget=0, preemptions=1, preemption_ceiling=2
    )
    assert (ok.shard_state, ok.preempted, ok.uses_budget) == (S.PENDING, True, False)
    lost = backoff.decide(
        -9,
        stop_reason=None,
        failures=0,
        budget=0,
        lost=True,
        reason="NodeLost: node n1 died",
        preemptions=2,
        preemption_ceiling=2,
    )
    assert lost.shard_state is S.FAILED and lost.reason.startswith("PreemptionLimit")
    assert lost.reason.endswith("last: NodeLost: node n1 died")


@pytest.mark.parametrize(
    ("code", "stop", "failures", "budget", "shard_state", "used"),
    [
        # a shard whose node died is retried (a preemption) and the retry is free, even with
        # no budget left
        (-9, None, 0, 3, S.PENDING, False),
        (-9, None, 3, 3, S.PENDING, False),
        (-9, None, 0, 0, S.PENDING, False),
        # a stop the control plane asked for still wins over the node loss
        (-9, "timeout", 0, 3, S.TIMED_OUT, False),
        (-9, "cancel", 0, 3, S.CANCELLED, False),
    ],
)
def test_backoff_node_lost(
    code: int, stop: str | None, failures: int, budget: int, shard_state: S, used: bool
) -> None:
    out = backoff.decide(
        code, stop_reason=stop, failures=failures, budget=budget, reason="NodeLost: x", lost=True
    )
    assert (out.shard_state, out.uses_budget) == (shard_state, used)
    if shard_state is S.PENDING:
        assert (out.attempt_state, out.reason) == (AttemptState.PREEMPTED, "NodeLost: x")


def test_backoff_reasons() -> None:
    assert backoff.decide(-9, stop_reason=None, failures=0, budget=0).reason == "Killed by SIGKILL"
    assert backoff.decide(2, stop_reason=None, failures=0, budget=0).reason == "Error"
    assert (
        backoff.decide(127, stop_reason=None, failures=0, budget=0, reason="LaunchError: x").reason
        == "LaunchError: x"
    )


CPU2 = admission.Resources.of_host(2, 8 << 30)


def cand(
    run: str, gang: bool, machine: str, pending: int, org: str = "o1", queued: bool = True
) -> queue.Candidate:
    return queue.Candidate(run, org, gang, machine, pending, queued)


@pytest.mark.parametrize(
    ("cands", "free", "units", "starts", "waiting"),
    [
        # a gang that fits starts whole
        ([cand("a", True, "nano", 9)], CPU2, {}, {"a": 9}, set()),
        # a gang that does not fit holds the head: nothing behind it starts (no starvation)
        (
            [cand("a", True, "standard", 3), cand("b", False, "standard", 3)],
            CPU2,
            {},
            {},
            {"a", "b"},
        ),
        ([cand("a", True, "standard", 3), cand("b", True, "nano", 1)], CPU2, {}, {}, {"a", "b"}),
        # gang runs go before opportunistic ones submitted earlier
        (
            [cand("o", False, "standard", 2), cand("g", True, "standard", 2)],
            CPU2,
            {},
            {"g": 2},
            {"o"},
        ),
        # opportunistic: start what fits, by memory too
        (
            [cand("m", False, "large", 4)],
            admission.Resources.of_host(64, 8 << 30),
            {},
            {"m": 2},
            {"m"},
        ),
        # fair share: the org with fewer running units goes first, whatever the order
        (
            [
                cand("a", True, "standard", 1, org="busy"),
                cand("b", True, "standard", 1, org="idle"),
            ],
            admission.Resources.of_host(1, 8 << 30),
            {"busy": 3.0},
            {"b": 1},
            {"a"},
        ),
        # ...and within one pass the shares even out: a1, b1 (then a2 waits)
        (
            [
                cand("a1", False, "standard", 1, org="a"),
                cand("a2", False, "standard", 1, org="a"),
                cand("b1", False, "standard", 1, org="b"),
            ],
            CPU2,
            {},
            {"a1": 1, "b1": 1},
            {"a2"},
        ),
        # FIFO within an org and a priority
        (
            [cand("x", False, "standard", 1), cand("y", False, "standard", 1)],
            admission.Resources.of_host(1, 8 << 30),
            {},
            {"x": 1},
            {"y"},
        ),
        # nothing free: everyone waits
        ([cand("a", True, "nano", 1)], admission.ZERO, {}, {}, {"a"}),
    ],
)
def test_admit(
    cands: list[queue.Candidate],
    free: admission.Resources,
    units: dict[str, float],
    starts: dict[str, int],
    waiting: set[str],
) -> None:
    decision = queue.admit(cands, free=free, org_units=units)
    assert decision.starts == starts
    assert set(decision.waiting) == waiting


def test_waiting_message_has_the_numbers_and_positions() -> None:
    d = queue.admit(
        [cand("a", True, "large", 9), cand("b", True, "nano", 1), cand("c", False, "nano", 1)],
        free=CPU2,
        org_units={},
    )
    assert d.waiting["a"] == (
        "waiting for capacity: needs 18 vCPU / 36 GiB at once (9 x large);"
        " 2 vCPU / 8 GiB free; 0 run(s) ahead"
    )
    assert d.waiting["c"] == "waiting behind a, which holds the head of the queue; 2 run(s) ahead"
    assert d.positions == {"a": 1, "b": 2, "c": 3}


@pytest.mark.parametrize(
    ("total", "head", "starts"),
    [
        # the gang fits the cluster, not what is free: it holds the head, b waits behind
        (admission.Resources.of_host(8, 32 << 30), "g", {}),
        # a node was lost: the cluster cannot hold the gang at all; it waits aside, b runs
        (CPU2, None, {"b": 1}),
    ],
)
def test_a_gang_that_cannot_fit_the_cluster_does_not_hold_the_queue(
    total: admission.Resources, head: str | None, starts: dict[str, int]
) -> None:
    d = queue.admit(
        [cand("g", True, "standard", 4), cand("b", False, "nano", 1)],
        free=admission.Resources.of_host(1, 4 << 30),
        org_units={},
        total=total,
    )
    assert d.starts == starts
    if head is None:
        assert d.waiting["g"] == (
            "waiting for nodes: needs 4 vCPU / 8 GiB at once (4 x standard); the cluster has"
            " 2 vCPU / 8 GiB in all now; it waits aside until nodes join or its admission"
            " deadline passes"
        )
        assert "g" not in d.positions and "b" not in d.waiting
    else:
        assert d.waiting["b"].startswith(f"waiting behind {head}")


def v(attempt: int, seconds: float, preemptions: int = 0, machine: str = "standard") -> Victim:
    return Victim(attempt, machine, seconds, preemptions)


@pytest.mark.parametrize(
    ("victims", "free_cpus", "chosen"),
    [
        ([v(1, 100), v(2, 5), v(3, 50)], 0, [2, 3]),  # fewest shard-seconds lost first
        ([v(1, 10, preemptions=2), v(2, 10)], 1, [2]),  # then fewest preemptions
        ([v(1, 10, preemptions=3), v(2, 10)], 0, None),  # at the ceiling: never chosen
        ([v(1, 10)], 0, None),  # not enough even with every victim: preempt nobody
        ([v(1, 10), v(2, 20)], 2, []),  # it already fits
    ],
)
def test_preemption_victims(
    victims: list[Victim], free_cpus: int, chosen: list[int] | None
) -> None:
    need = admission.Resources.of_tier("standard", 2)
    got = preemption.choose(
        victims, need=need, ceiling=3, free=admission.Resources.of_host(free_cpus, 8 << 30)
    )
    assert (None if got is None else [x.attempt_id for x in got]) == chosen


def test_gang_head_preempts_opportunistic_shards() -> None:
    d = queue.admit(
        [cand("g", True, "standard", 2)],
        free=admission.ZERO,
        org_units={},
        victims=[v(7, 30), v(8, 2), v(9, 60)],
    )
    assert [x.attempt_id for x in d.preempt] == [8, 7]
    assert d.waiting["g"].endswith("preempting 2 opportunistic shard(s) to make room")
    # next pass: those two are stopping; nobody else is preempted
    d2 = queue.admit(
        [cand("g", True, "standard", 2)],
        free=admission.ZERO,
        org_units={},
        victims=[v(9, 61)],
        stopping=admission.Resources.of_tier("standard", 2),
    )
    assert d2.preempt == [] and "stopping to make room" in d2.waiting["g"]


def test_check_schedulable_gang_never_fits() -> None:
    with pytest.raises(Unschedulable) as err:
        admission.check_schedulable(machine="large", parallelism=9, gang=True, total=CPU2)
    assert "needs 18 vCPU / 36 GiB at once" in err.value.message
    assert "reduce parallelism to <= 1" in err.value.message
    assert "gangScheduling: false" in err.value.message
    # opportunistic: fine, shards start as capacity frees
    admission.check_schedulable(machine="large", parallelism=9, gang=False, total=CPU2)
    with pytest.raises(Unschedulable, match="one 2xlarge shard needs 8 vCPU"):
        admission.check_schedulable(machine="2xlarge", parallelism=1, gang=False, total=CPU2)


LIVE = deadlines.LiveAttempt(T0, None, None, None)


@pytest.mark.parametrize(
    ("attempt", "seconds_later", "cancel", "expected"),
    [
        (LIVE, 5, False, None),
        (LIVE, 10, False, ("term", "timeout")),
        (LIVE, 1, True, ("term", "cancel")),
        (deadlines.LiveAttempt(T0, "timeout", T0 + timedelta(seconds=10), None), 11, False, None),
        (
            deadlines.LiveAttempt(T0, "timeout", T0 + timedelta(seconds=10), None),
            12,
            False,
            ("kill", "timeout"),
        ),
        (deadlines.LiveAttempt(T0, "cancel", T0, T0 + timedelta(seconds=2)), 30, True, None),
    ],
)
def test_deadlines(
    attempt: deadlines.LiveAttempt,
    seconds_later: int,
    cancel: bool,
    expected: tuple[str, str] | None,
) -> None:
    now = T0 + timedelta(seconds=seconds_later)
    got = deadlines.next_action(
        attempt, now=now, timeout_seconds=10, grace_seconds=2, cancel_requested=cancel
    )
    assert got == expected


@pytest.mark.parametrize(
    ("indexes", "text"),
    [([], ""), ([7], "7"), ([0, 1, 2, 3, 7], "0-3,7"), ([9, 10, 1, 0], "0-1,9-10")],
)
def test_index_sets(indexes: list[int], text: str) -> None:
    assert compress(indexes) == text
    assert expand(text) == sorted(indexes)


def test_index_set_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        expand("3-1")


def _shard(state: S) -> ShardRow:
    return ShardRow(run_id="wrk_x", index=0, state=state.value, attempts=0, failures=0)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (S.PENDING, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.PENDING),
        (S.RUNNING, S.TIMED_OUT),
        (S.PENDING, S.CANCELLED),
        (S.STARTING, S.FAILED),
    ],
)
def test_legal_shard_transitions(src: S, dst: S) -> None:
    shard = _shard(src)
    transition(shard, dst, T0)
    assert shard.state == dst.value
    assert (shard.ended_at is not None) == dst.terminal


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (S.PENDING, S.RUNNING),
        (S.PENDING, S.SUCCEEDED),
        (S.SUCCEEDED, S.PENDING),
        (S.FAILED, S.RUNNING),
        (S.CANCELLED, S.PENDING),
        (S.TIMED_OUT, S.SUCCEEDED),
    ],
)
def test_illegal_shard_transitions(src: S, dst: S) -> None:
    with pytest.raises(IllegalTransition, match=f"{src.value} -> {dst.value}"):
        transition(_shard(src), dst, T0)


@pytest.mark.parametrize("src", list(S))
def test_every_shard_transition_follows_the_table(src: S) -> None:
    """Every (from, to) pair, for ORM rows and records, with states stored as plain
    strings or (set by hand) as members: legal exactly when the table says so."""
    for dst in S:
        for state in (src.value, src):
            record = ShardRecord(1, "wrk_x", 0, str(state), 0, 0, 0, None, None, None, None, 1)
            for shard in (_shard(src), record):
                shard.state = state
                if dst in SHARD_TRANSITIONS[src]:
                    transition(shard, dst, T0)
                    assert shard.state == dst.value and type(shard.state) is str
                else:
                    with pytest.raises(IllegalTransition):
                        transition(shard, dst, T0)


def _attempt(state: str) -> AttemptRecord:
    return AttemptRecord(
        1, 1, "wrk_x", 1, state, "att:x", T0, None, None, None, None, None, None, None, None,
        None, 1,
    )  # fmt: skip


@pytest.mark.parametrize("src", list(AttemptState))
def test_every_attempt_transition_follows_the_table(src: AttemptState) -> None:
    """An attempt is one process: it starts once and ends once. Every (from, to) pair is
    legal exactly when the attempt table says so; an ended attempt never moves again."""
    for dst in AttemptState:
        attempt = _attempt(src.value)
        if dst in ATTEMPT_TRANSITIONS[src]:
            transition(attempt, dst, T0)
            assert attempt.state == dst.value and type(attempt.state) is str
        else:
            with pytest.raises(IllegalTransition, match=f"attempt .*{src.value} -> {dst.value}"):
                transition(attempt, dst, T0)
            assert attempt.state == src.value
    assert not ATTEMPT_TRANSITIONS[src] or not src.terminal


def test_run_transitions() -> None:
    run = RunRow(id="wrk_x", state="queued")
    transition(run, RunState.RUNNING, T0)
    assert run.started_at == T0
    transition(run, RunState.PARTIAL, T0)
    assert run.ended_at == T0
    with pytest.raises(IllegalTransition):
        transition(run, RunState.RUNNING, T0)
    with pytest.raises(IllegalTransition):
        transition(RunRow(id="wrk_y", state="queued"), RunState.SUCCEEDED, T0)
