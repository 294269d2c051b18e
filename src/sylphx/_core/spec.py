"""The run spec: one pydantic model shared by the API, the SDK and the CLI.

Wire JSON uses the spec page's camelCase names; Python uses snake_case. Every
rule violation is reported with the field, the rule and the fix.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from . import limits, merge
from .failure import MAX_RULES, FailureRule, RetryBackoff
from .limits import Text, rule
from .machines import DEFAULT_MACHINE, MachineName
from .merge import MERGE_INDEX, MergeSpec, should_run
from .model import WireModel as _Model
from .mounts import VolumeMount, check_mounts
from .paths import PathRuleError, normalise
from .validation import validation_error

__all__ = ["CompletionMode", "RunSpec", "VolumeMount"]

CompletionMode = Literal["Indexed", "NonIndexed"]
AdmissionFallback = Literal["fail", "opportunistic"]

MAX_PARALLELISM = 256
MAX_TIMEOUT_SECONDS = merge.MAX_TIMEOUT_SECONDS
DEFAULT_TIMEOUT_SECONDS = 3600
MAX_BACKOFF_LIMIT = 50
DEFAULT_BACKOFF_LIMIT = 3
MAX_COMPUTE_SECONDS = 10**9  # a spend cap: about 32 compute-years


class RunSpec(_Model):
    """What to run and how to fan it out. Defaults are filled in on validation."""

    # Strict on the wire: no "3" -> 3 or true -> 1; every string is NUL-free UTF-8 and
    # every size is bounded (see _limits: anything accepted can be launched).
    image: Annotated[Text, Field(max_length=limits.MAX_IMAGE_BYTES)] | None = None
    command: list[Text] | None = None  # with an image: replaces its CMD (ENTRYPOINT kept)
    env: dict[Text, Text] = Field(default_factory=dict)
    parallelism: StrictInt = 1
    completion_mode: CompletionMode | None = None
    gang_scheduling: StrictBool | None = None
    backoff_limit_per_index: StrictInt | None = None
    machine: MachineName = DEFAULT_MACHINE  # type: ignore[assignment]
    volume_mounts: list[VolumeMount] = Field(default_factory=list)
    timeout_seconds: StrictInt = DEFAULT_TIMEOUT_SECONDS
    working_dir: Text | None = None  # where the command starts; the SDK/CLI default to cwd
    network: StrictBool = True  # false: the shards get no network at all
    secrets: list[Text] = Field(default_factory=list)  # names of the org's secrets, as env vars
    admission_timeout_seconds: StrictInt | None = None  # gang runs: give up waiting after this
    admission_fallback: AdmissionFallback | None = None  # ...or carry on as opportunistic
    # failure policies (see failure.py): end the run once more indices than this failed
    # for good; rules on exit codes and reasons; the delay before a retry
    max_failed_indexes: StrictInt | None = None
    failure_policy: list[FailureRule] = Field(default_factory=list)
    retry_backoff: RetryBackoff = Field(default_factory=RetryBackoff)
    merge: MergeSpec | None = None  # run once every shard ended (see merge.py)
    # a spend cap: once the run's compute-seconds (ended and live) reach it, it is stopped
    max_compute_seconds: StrictInt | StrictFloat | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise rule("image", "must not be empty", "omit image to run on the host, or name one")
        return v

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, v: str | None) -> str | None:
        if v is None:
            return v
        fix = "give an absolute path without '..', e.g. /work/job"
        try:
            norm = normalise(v)  # stored spelled one way: //w/./job -> /w/job
        except PathRuleError as exc:
            raise rule("workingDir", str(exc), fix) from None
        limits.check_path(norm, "workingDir", fix)
        return norm

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        limits.check_secret_names(v)
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v or not v[0]:
            raise rule("command", "must be a non-empty argv list", 'e.g. ["python", "train.py"]')
        limits.check_command(v)  # NUL bytes and surrogates: refused by Text
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        limits.check_env_names(v)
        limits.check_env(v)  # NUL bytes and surrogates: refused by Text
        return v

    @field_validator("parallelism")
    @classmethod
    def _parallelism(cls, v: int) -> int:
        if not 1 <= v <= MAX_PARALLELISM:
            raise rule(
                "parallelism",
                f"must be between 1 and {MAX_PARALLELISM} (got {v})",
                f"set parallelism to a shard count from 1 to {MAX_PARALLELISM}",
            )
        return v

    @field_validator("backoff_limit_per_index")
    @classmethod
    def _backoff(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_BACKOFF_LIMIT:
            raise rule(
                "backoffLimitPerIndex",
                f"must be between 0 and {MAX_BACKOFF_LIMIT} (got {v})",
                f"set a retry budget from 0 to {MAX_BACKOFF_LIMIT}, or omit it for the default"
                f" of {DEFAULT_BACKOFF_LIMIT}",
            )
        return v

    @field_validator("timeout_seconds")
    @classmethod
    def _timeout(cls, v: int) -> int:
        if not 1 <= v <= MAX_TIMEOUT_SECONDS:
            raise rule(
                "timeoutSeconds",
                f"must be between 1 and {MAX_TIMEOUT_SECONDS} (got {v})",
                f"set a per-shard deadline from 1 to {MAX_TIMEOUT_SECONDS} seconds (24h)",
            )
        return v

    @field_validator("volume_mounts")
    @classmethod
    def _mounts(cls, v: list[VolumeMount]) -> list[VolumeMount]:
        check_mounts(v)
        return v

    @field_validator("max_compute_seconds")
    @classmethod
    def _spend_cap(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= MAX_COMPUTE_SECONDS:
            raise rule(
                "maxComputeSeconds",
                f"must be above 0 and at most {MAX_COMPUTE_SECONDS:,} (got {v})",
                "give the most standard compute-seconds the run may use, or omit it",
            )
        return v

    @field_validator("failure_policy")
    @classmethod
    def _failure_policy(cls, v: list[FailureRule]) -> list[FailureRule]:
        if len(v) > MAX_RULES:
            raise rule(
                "failurePolicy",
                f"has {len(v)} rules; a run may have {MAX_RULES}",
                "merge rules with the same action into one (values take a list)",
            )
        return v

    @model_validator(mode="after")
    def _max_failed_indexes(self) -> RunSpec:
        limit = self.max_failed_indexes
        if limit is not None and not 0 <= limit < self.parallelism:
            raise rule(
                "maxFailedIndexes",
                f"must be between 0 and parallelism - 1 ({self.parallelism - 1}) (got {limit})",
                "give how many indices may fail for good before the run is stopped, or omit"
                " it to let every index run to its end",
            )
        return self

    @model_validator(mode="after")
    def _cross_field_rules_and_defaults(self) -> RunSpec:
        if self.command is None and self.image is None:
            raise rule(
                "command",
                "is required",
                'give the argv to run, e.g. ["python", "train.py"] (or an image whose CMD runs)',
            )
        distributed = self.parallelism > 1
        if self.backoff_limit_per_index is not None:
            if not distributed:
                raise rule(
                    "backoffLimitPerIndex",
                    "requires parallelism > 1 (distributed runs only)",
                    "set parallelism to 2 or more, or remove backoffLimitPerIndex",
                )
            if self.gang_scheduling is not False:
                raise rule(
                    "backoffLimitPerIndex",
                    "requires gangScheduling: false (opportunistic runs only)",
                    "set gangScheduling: false (CLI: --opportunistic), or remove"
                    " backoffLimitPerIndex",
                )
        if self.admission_timeout_seconds is not None:
            if not 1 <= self.admission_timeout_seconds <= MAX_TIMEOUT_SECONDS:
                raise rule(
                    "admissionTimeoutSeconds",
                    f"must be between 1 and {MAX_TIMEOUT_SECONDS} (got"
                    f" {self.admission_timeout_seconds})",
                    "give how long a gang run may wait in the queue, in seconds",
                )
            if self.gang_scheduling is False:
                raise rule(
                    "admissionTimeoutSeconds",
                    "applies to gang runs only",
                    "remove it, or set gangScheduling: true",
                )
        elif self.admission_fallback is not None:
            raise rule(
                "admissionFallback",
                "requires admissionTimeoutSeconds",
                "set admissionTimeoutSeconds, or remove admissionFallback",
            )
        # Fill defaults so the stored spec says exactly what will happen.
        gang = True if self.gang_scheduling is None else self.gang_scheduling
        object.__setattr__(self, "gang_scheduling", gang)
        if self.completion_mode is None:
            object.__setattr__(self, "completion_mode", "Indexed")
        if not gang and distributed and self.backoff_limit_per_index is None:
            object.__setattr__(self, "backoff_limit_per_index", DEFAULT_BACKOFF_LIMIT)
        if self.admission_timeout_seconds is not None and self.admission_fallback is None:
            object.__setattr__(self, "admission_fallback", "fail")
        return self

    @model_validator(mode="after")
    def _merge(self) -> RunSpec:
        m = self.merge
        if m is None:
            return self
        wanted = getattr(m.when, "min_succeeded", 0)
        if wanted > self.parallelism:
            raise rule(
                "merge.when.minSucceeded",
                f"asks for {wanted} succeeded indices of a run of {self.parallelism}",
                f"give a number from 1 to parallelism ({self.parallelism})",
            )
        filled = m.filled(
            image=self.image, machine=self.machine, timeout_seconds=self.timeout_seconds
        )
        object.__setattr__(self, "merge", filled)
        return self

    # -- derived ---------------------------------------------------------
    @property
    def gang(self) -> bool:
        """True when all shards must be admitted together (the default)."""
        return self.gang_scheduling is not False

    @property
    def retry_budget(self) -> int:
        """Retries each index may use after a failed attempt (0 for gang runs)."""
        return self.backoff_limit_per_index or 0

    @property
    def indexed(self) -> bool:
        return self.completion_mode != "NonIndexed"

    def for_index(self, index: int) -> RunSpec:
        """The spec shard ``index`` runs with: the run's own; for the merge (MERGE_INDEX)
        the run's with the merge's command, image, machine, env (added over the run's),
        timeout and retry budget, one unindexed process, no failure policy."""
        m = self.merge
        if index != MERGE_INDEX or m is None:
            return self
        return self.model_copy(
            update={
                "command": m.command,
                "image": m.image,
                "machine": m.machine or self.machine,
                "env": self.env | m.env,
                "timeout_seconds": m.timeout_seconds or self.timeout_seconds,
                "backoff_limit_per_index": m.backoff_limit,
                "gang_scheduling": False,
                "completion_mode": "NonIndexed",
                "failure_policy": [],
                "max_failed_indexes": None,
                "retry_backoff": RetryBackoff(),
                "merge": None,
            }
        )

    def merges(self, succeeded: int) -> bool:
        """Whether the merge runs once every shard ended, ``succeeded`` of them so."""
        return self.merge is not None and should_run(self.merge.when, succeeded, self.parallelism)

    def as_opportunistic(self) -> RunSpec:
        """This spec continuing as an opportunistic run (the admission fallback)."""
        wire = self.to_wire() | {
            "gangScheduling": False,
            "admissionTimeoutSeconds": None,
            "admissionFallback": None,
            "backoffLimitPerIndex": None,
        }
        return RunSpec.parse(wire)

    @classmethod
    def from_store(cls, data: dict[str, Any]) -> RunSpec:
        """The spec of a stored run (the :meth:`to_wire` of a spec accepted then), trusted
        as it is: a run accepted under older rules stays readable, listable, cancellable.
        A string that cannot be sent (a lone surrogate stored before they were refused)
        comes back with U+FFFD in its place."""
        clean = _sendable(data)
        mounts = [
            VolumeMount.model_construct(
                **{n: m[f.alias or n] for n, f in VolumeMount.model_fields.items()}
            )
            for m in clean.get("volumeMounts") or []
        ]
        fields = {n: clean[f.alias or n] for n, f in cls.model_fields.items() if f.alias in clean}
        nested: dict[str, Any] = {"volume_mounts": mounts}
        if "failurePolicy" in clean:  # small, and valid when stored: validated again
            nested["failure_policy"] = [
                FailureRule.model_validate(r) for r in clean["failurePolicy"]
            ]
        if "retryBackoff" in clean:
            nested["retry_backoff"] = RetryBackoff.model_validate(clean["retryBackoff"])
        if clean.get("merge"):
            nested["merge"] = MergeSpec.model_validate(clean["merge"])
        return cls.model_construct(**(fields | nested))

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON form, with every default filled in."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def parse(cls, data: Any) -> RunSpec:
        """Validate wire JSON (camelCase) or Python kwargs (snake_case) into a spec.

        Raises :class:`sylphx.ValidationError` naming every broken field, rule and fix.
        """
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise validation_error(exc, cls) from None


def _sendable(value: Any) -> Any:
    """``value`` (stored JSON) with every lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        return limits.SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_sendable(v) for v in value]
    if isinstance(value, dict):
        return {_sendable(k): _sendable(v) for k, v in value.items()}
    return value
