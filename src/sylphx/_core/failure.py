"""Failure policies of a run spec, with Kubernetes' names and meanings: ``failurePolicy``
(an ordered list of rules on exit codes or reasons, as ``podFailurePolicy``) and
``retryBackoff`` (the delay before an index's next attempt). ``maxFailedIndexes`` is a
plain field of the spec."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictFloat, StrictInt, model_validator

from .limits import rule
from .model import WireModel as _Model

__all__ = ["ExitCodes", "FailureAction", "FailureRule", "RetryBackoff", "rule_for"]

FailureAction = Literal["FailIndex", "FailRun", "Ignore", "Count"]
FailureReason = Literal["OOMKilled", "DeadlineExceeded"]
MAX_RULES = 20  # as Kubernetes
MAX_VALUES = 255
MAX_BACKOFF_SECONDS = 3600.0


class ExitCodes(_Model):
    """Which exit codes a rule matches: ``In`` (one of ``values``) or ``NotIn`` (none of
    them). A shard killed by signal N exits 128 + N (SIGKILL: 137)."""

    operator: Literal["In", "NotIn"]
    values: list[StrictInt] = Field(min_length=1, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _values(self) -> ExitCodes:
        fix = "list exit codes from 0 to 255, each once (In: 1 to 255)"
        if any(not 0 <= v <= 255 for v in self.values):
            raise rule("onExitCodes.values", "must be exit codes from 0 to 255", fix)
        if len(set(self.values)) != len(self.values):
            raise rule("onExitCodes.values", "lists an exit code twice", fix)
        if self.operator == "In" and 0 in self.values:
            raise rule(
                "onExitCodes.values",
                "must not hold 0 with operator In: exit code 0 is success, never a failure",
                fix,
            )
        return self

    def matches(self, code: int) -> bool:
        return (code in self.values) == (self.operator == "In")


class FailureRule(_Model):
    """One rule: when an attempt fails with an exit code in ``on_exit_codes`` (or for one
    of ``on_reasons``: ``OOMKilled``, past its tier's memory; ``DeadlineExceeded``, past
    ``timeoutSeconds``), do ``action``: ``FailIndex`` spends no more retries on that index,
    ``FailRun`` ends the run failed, ``Ignore`` retries without using the budget, ``Count``
    uses the budget (as when no rule matches)."""

    action: FailureAction
    on_exit_codes: ExitCodes | None = None
    on_reasons: list[FailureReason] | None = Field(default=None, min_length=1, max_length=2)

    @model_validator(mode="after")
    def _one_condition(self) -> FailureRule:
        if (self.on_exit_codes is None) == (self.on_reasons is None):
            raise rule(
                "failurePolicy",
                "each rule needs exactly one of onExitCodes and onReasons",
                'e.g. {"onExitCodes": {"operator": "In", "values": [42]}, "action":'
                ' "FailIndex"} or {"onReasons": ["OOMKilled"], "action": "FailRun"}',
            )
        return self

    def matches(self, code: int, reason: str | None) -> bool:
        if self.on_reasons is not None:
            return reason is not None and reason.split(":")[0] in self.on_reasons
        assert self.on_exit_codes is not None
        return reason != "DeadlineExceeded" and self.on_exit_codes.matches(code)


def rule_for(
    rules: list[FailureRule], code: int, reason: str | None
) -> tuple[int, FailureRule] | None:
    """The first rule that matches a failed attempt (its 1-based position), or None."""
    for position, candidate in enumerate(rules, start=1):
        if candidate.matches(code, reason):
            return position, candidate
    return None


class RetryBackoff(_Model):
    """The delay before an index's next attempt after a failure: ``initial_seconds``,
    multiplied by ``factor`` for each failure after the first, at most ``max_seconds``.
    The default, 1 s doubling to 60 s, keeps short runs snappy (three retries wait 7 s in
    all); Kubernetes waits 10 s doubling to 6 min. A preemption is retried at once."""

    initial_seconds: StrictFloat | StrictInt = 1.0
    factor: StrictFloat | StrictInt = 2.0
    max_seconds: StrictFloat | StrictInt = 60.0

    @model_validator(mode="after")
    def _bounds(self) -> RetryBackoff:
        top = MAX_BACKOFF_SECONDS
        if not 0 <= self.initial_seconds <= top:
            raise rule(
                "retryBackoff.initialSeconds",
                f"must be between 0 and {top:g} (got {self.initial_seconds})",
                "give the first delay in seconds; 0 retries at once",
            )
        if not 1 <= self.factor <= 10:
            raise rule(
                "retryBackoff.factor",
                f"must be between 1 and 10 (got {self.factor})",
                "give the multiplier per failure, e.g. 2 to double",
            )
        if not self.initial_seconds <= self.max_seconds <= top:
            raise rule(
                "retryBackoff.maxSeconds",
                f"must be between initialSeconds and {top:g} (got {self.max_seconds})",
                "give the longest delay in seconds",
            )
        return self

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt of an index that has failed ``failures`` times."""
        if failures <= 0:
            return 0.0
        return float(min(self.max_seconds, self.initial_seconds * self.factor ** (failures - 1)))
