"""The failure policies as pure functions, table-driven: ``failurePolicy`` rules (first
match decides, as Kubernetes' ``podFailurePolicy``) and the ``retryBackoff`` delays."""

from __future__ import annotations

from typing import Any

import pytest

from sylphx._core.errors import ValidationError
from sylphx._core.failure import FailureRule, RetryBackoff
from sylphx._core.spec import RunSpec
from sylphx._core.states import AttemptState as A
from sylphx._core.states import ShardState as S
from sylphx._server.controller.policy import backoff

OOM = "OOMKilled: the shard went over its machine tier's memory"


def rules(*wire: dict[str, Any]) -> list[FailureRule]:
    return [FailureRule.model_validate(r) for r in wire]


def codes(op: str, *values: int) -> dict[str, Any]:
    return {"operator": op, "values": list(values)}


# (rules, exit code, stop cause, reason, failures, budget) -> (attempt, shard, budget used,
# fail_run, reason suffix)
CASES = [
    # no rule: today's behaviour (Count; a timeout ends the index)
    ([], 3, None, None, 0, 3, A.FAILED, S.PENDING, True, False, "Error"),
    ([], 3, None, None, 3, 3, A.FAILED, S.FAILED, True, False, "Error"),
    ([], 143, "timeout", None, 0, 3, A.TIMED_OUT, S.TIMED_OUT, False, False, "DeadlineExceeded"),
    # FailIndex: no more retries for this index, whatever the budget
    (
        rules({"onExitCodes": codes("In", 42), "action": "FailIndex"}),
        42, None, None, 0, 3, A.FAILED, S.FAILED, True, False,
        "Error (failurePolicy rule 1: FailIndex)",
    ),
    # ...a code it does not name is counted as usual
    (
        rules({"onExitCodes": codes("In", 42), "action": "FailIndex"}),
        3, None, None, 0, 3, A.FAILED, S.PENDING, True, False, "Error",
    ),
    # NotIn: every code but these
    (
        rules({"onExitCodes": codes("NotIn", 1, 2), "action": "FailIndex"}),
        3, None, None, 0, 3, A.FAILED, S.FAILED, True, False,
        "Error (failurePolicy rule 1: FailIndex)",
    ),
    # FailRun: the index ends, and the run with it
    (
        rules({"onExitCodes": codes("In", 7), "action": "FailRun"}),
        7, None, None, 0, 3, A.FAILED, S.FAILED, False, True,
        "Error (failurePolicy rule 1: FailRun)",
    ),
    # Ignore: retried without using the budget, even with none left
    (
        rules({"onExitCodes": codes("In", 75), "action": "Ignore"}),
        75, None, None, 3, 3, A.FAILED, S.PENDING, False, False,
        "Error (failurePolicy rule 1: Ignore)",
    ),
    # Count: as with no rule (stops a later rule from matching)
    (
        rules(
            {"onExitCodes": codes("In", 5), "action": "Count"},
            {"onExitCodes": codes("NotIn", 1), "action": "FailRun"},
        ),
        5, None, None, 0, 3, A.FAILED, S.PENDING, True, False,
        "Error (failurePolicy rule 1: Count)",
    ),
    # the first rule that matches decides
    (
        rules(
            {"onExitCodes": codes("NotIn", 1), "action": "FailIndex"},
            {"onExitCodes": codes("In", 9), "action": "Ignore"},
        ),
        9, None, None, 0, 3, A.FAILED, S.FAILED, True, False,
        "Error (failurePolicy rule 1: FailIndex)",
    ),
    # reasons: OOMKilled (exit 137) and DeadlineExceeded
    (
        rules({"onReasons": ["OOMKilled"], "action": "FailRun"}),
        137, None, OOM, 0, 3, A.FAILED, S.FAILED, False, True,
        OOM + " (failurePolicy rule 1: FailRun)",
    ),
    (
        rules({"onReasons": ["DeadlineExceeded"], "action": "Count"}),
        143, "timeout", None, 0, 3, A.TIMED_OUT, S.PENDING, True, False,
        "DeadlineExceeded (failurePolicy rule 1: Count)",
    ),
    (
        rules({"onReasons": ["DeadlineExceeded"], "action": "Count"}),
        143, "timeout", None, 3, 3, A.TIMED_OUT, S.TIMED_OUT, True, False,
        "DeadlineExceeded (failurePolicy rule 1: Count)",
    ),
    # an exit-code rule never matches a timeout (its 143 is the platform's SIGTERM)
    (
        rules({"onExitCodes": codes("In", 143), "action": "Ignore"}),
        143, "timeout", None, 0, 3, A.TIMED_OUT, S.TIMED_OUT, False, False, "DeadlineExceeded",
    ),
    # cancels and preemptions are not failures: rules never apply
    (
        rules({"onExitCodes": codes("NotIn", 0), "action": "FailRun"}),
        143, "cancel", None, 0, 3, A.CANCELLED, S.CANCELLED, False, False, "Cancelled",
    ),
    (
        rules({"onExitCodes": codes("NotIn", 0), "action": "FailRun"}),
        143, "preempt", None, 0, 3, A.PREEMPTED, S.PENDING, False, False,
        "Preempted: stopped to make room for a gang run",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rules_", "code", "stop", "reason", "failures", "budget", "attempt", "shard", "used",
     "fails_run", "why"),
    CASES,
)  # fmt: skip
def test_failure_policy_rules(
    rules_: list[FailureRule], code: int, stop: str | None, reason: str | None,
    failures: int, budget: int, attempt: A, shard: S, used: bool, fails_run: bool, why: str,
) -> None:  # fmt: skip
    out = backoff.decide(
        code, stop_reason=stop, failures=failures,
        budget=budget, reason=reason, rules=rules_,
    )  # fmt: skip
    assert (out.attempt_state, out.shard_state, out.uses_budget) == (attempt, shard, used)
    assert (out.fail_run is not None) == fails_run
    assert out.reason == why
    if fails_run:
        assert out.fail_run is not None and "failurePolicy rule 1: FailRun" in out.fail_run


def test_ignore_is_bounded_by_the_preemption_ceiling() -> None:
    ignore = rules({"onExitCodes": codes("In", 75), "action": "Ignore"})
    retried = backoff.decide(75, stop_reason=None, failures=0, budget=0, rules=ignore, ignored=9)
    assert retried.shard_state is S.PENDING and retried.ignored
    last = backoff.decide(75, stop_reason=None, failures=0, budget=0, rules=ignore, ignored=10)
    assert last.shard_state is S.FAILED and last.reason.startswith("IgnoreLimit: retried 10")


def test_a_failrun_message_names_the_cause() -> None:
    exit_rule = rules({"onExitCodes": codes("In", 7), "action": "FailRun"})
    out = backoff.decide(7, stop_reason=None, failures=0, budget=3, rules=exit_rule)
    assert (
        out.fail_run == "FailRun: an index ended with exit code 7 (failurePolicy rule 1: FailRun)"
    )
    oom = rules({"onReasons": ["OOMKilled"], "action": "FailRun"})
    out = backoff.decide(137, stop_reason=None, failures=0, budget=3, reason=OOM, rules=oom)
    assert out.fail_run is not None and "ended with OOMKilled" in out.fail_run


@pytest.mark.parametrize(
    ("backoff_", "delays"),
    [
        (RetryBackoff(), [0, 1, 2, 4, 8, 16, 32, 60, 60]),  # the default
        (RetryBackoff(initial_seconds=10, factor=2, max_seconds=360), [0, 10, 20, 40, 80]),
        (RetryBackoff(initial_seconds=0), [0, 0, 0]),  # at once
        (RetryBackoff(initial_seconds=3, factor=1, max_seconds=3), [0, 3, 3, 3]),
    ],
)
def test_retry_backoff_delays(backoff_: RetryBackoff, delays: list[float]) -> None:
    assert [backoff_.delay(failures) for failures in range(len(delays))] == delays


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ({"maxFailedIndexes": 4}, "maxFailedIndexes"),
        ({"maxFailedIndexes": -1}, "maxFailedIndexes"),
        ({"failurePolicy": [{"action": "FailRun"}]}, "failurePolicy[0]"),
        (
            {"failurePolicy": [{"action": "FailRun", "onReasons": ["OOMKilled"],
                                "onExitCodes": codes("In", 1)}]},
            "failurePolicy[0]",
        ),
        ({"failurePolicy": [{"action": "Retry", "onReasons": ["OOMKilled"]}]}, "action"),
        ({"failurePolicy": [{"action": "Ignore", "onReasons": ["Evicted"]}]}, "onReasons"),
        ({"failurePolicy": [{"action": "Ignore", "onExitCodes": codes("In", 0)}]}, "onExitCodes"),
        ({"failurePolicy": [{"action": "Ignore", "onExitCodes": codes("In", 256)}]}, "onExitCodes"),
        ({"failurePolicy": [{"action": "Ignore", "onExitCodes": codes("Is", 1)}]}, "operator"),
        ({"failurePolicy": [{"action": "Ignore", "onExitCodes": codes("In")}]}, "values"),
        ({"failurePolicy": [{"action": "Count", "onReasons": ["OOMKilled"]}] * 21},
         "failurePolicy"),
        ({"retryBackoff": {"initialSeconds": -1}}, "retryBackoff.initialSeconds"),
        ({"retryBackoff": {"factor": 11}}, "retryBackoff.factor"),
        ({"retryBackoff": {"initialSeconds": 9, "maxSeconds": 8}}, "retryBackoff.maxSeconds"),
        ({"retryBackoff": {"jitter": True}}, "jitter"),
    ],
)  # fmt: skip
def test_bad_failure_policies_name_the_field(wire: dict[str, Any], field: str) -> None:
    base = {"command": ["x"], "parallelism": 4, "gangScheduling": False}
    with pytest.raises(ValidationError) as err:
        RunSpec.parse(base | wire)
    assert field in str(err.value), str(err.value)
    assert "Fix:" in str(err.value)


def test_the_stored_spec_says_what_will_happen() -> None:
    spec = RunSpec.parse({"command": ["x"], "parallelism": 4, "gangScheduling": False})
    wire = spec.to_wire()
    assert wire["retryBackoff"] == {"initialSeconds": 1.0, "factor": 2.0, "maxSeconds": 60.0}
    assert wire["failurePolicy"] == [] and wire["maxFailedIndexes"] is None
    assert RunSpec.from_store(wire) == spec
