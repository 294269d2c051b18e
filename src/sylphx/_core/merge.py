"""The merge step of a run spec (``merge``): one command the platform runs once every
shard has ended, fed ``SYLPHX_MANIFEST`` (the path of a read-only JSON file listing each
index's outcome), in the run's envelope, with its volumes, secrets and env.

It is stored as the run's shard ``MERGE_INDEX`` (-1): it is launched, settled, timed
out, cancelled, billed and logged as a shard is, but it is never counted among the
run's shards, and it starts only when they have all ended and ``when`` holds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, field_validator

from . import limits
from .limits import Text, rule
from .machines import MachineName
from .model import WireModel

__all__ = ["MERGE_INDEX", "MergeSpec", "MinSucceeded", "should_run", "when_text"]

MERGE_INDEX = -1  # the merge's row among the run's shards (never a shard index)
MAX_MERGE_BACKOFF = 10
MAX_TIMEOUT_SECONDS = 86400  # as the run's timeoutSeconds
_WHEN_FIX = 'use "allSucceeded" (the default), "always" or {"minSucceeded": K}'


class MinSucceeded(WireModel):
    """``when: {"minSucceeded": K}``: merge once at least K indices succeeded."""

    min_succeeded: StrictInt = Field(ge=1)


MergeWhen = Literal["allSucceeded", "always"] | MinSucceeded


class MergeSpec(WireModel):
    """The merge step. Unset fields take the run's values when the spec is validated
    (``image``, ``machine``, ``timeoutSeconds``); ``env`` is added over the run's."""

    command: list[Text]
    image: Annotated[Text, Field(max_length=limits.MAX_IMAGE_BYTES)] | None = None
    machine: MachineName | None = None
    env: dict[Text, Text] = Field(default_factory=dict)
    timeout_seconds: StrictInt | None = None
    when: MergeWhen = "allSucceeded"
    backoff_limit: StrictInt = 0

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v or not v[0]:
            raise rule(
                "merge.command",
                "must be a non-empty argv list",
                'e.g. ["python", "merge.py", "/cache"] (CLI: --merge-command)',
            )
        limits.check_command(v)
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise rule("merge.image", "must not be empty", "omit it to use the run's image")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        limits.check_env_names(v, "merge.env")
        limits.check_env(v, "merge.env")
        return v

    @field_validator("timeout_seconds")
    @classmethod
    def _timeout(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= MAX_TIMEOUT_SECONDS:
            raise rule(
                "merge.timeoutSeconds",
                f"must be between 1 and {MAX_TIMEOUT_SECONDS} (got {v})",
                "give the merge's deadline in seconds, or omit it for the run's timeoutSeconds",
            )
        return v

    @field_validator("when", mode="before")
    @classmethod
    def _when(cls, v: Any) -> Any:
        """One clear rule, not one error per branch of the union."""
        if isinstance(v, str) and v not in ("allSucceeded", "always"):
            raise rule("merge.when", f"{limits.shown(v)} is not a merge condition", _WHEN_FIX)
        if isinstance(v, dict):
            if len(v) != 1 or not set(v) <= {"minSucceeded", "min_succeeded"}:
                got = ", ".join(limits.shown(k) for k in v) or "no field"
                raise rule(
                    "merge.when", f"an object must hold minSucceeded only (got {got})", _WHEN_FIX
                )
            k = next(iter(v.values()))
            if type(k) is not int or k < 1:
                raise rule(
                    "merge.when.minSucceeded",
                    f"must be a whole number of at least 1 (got {limits.shown(k)})",
                    _WHEN_FIX,
                )
            return MinSucceeded(min_succeeded=k)
        if not isinstance(v, str | MinSucceeded):
            raise rule("merge.when", "must be a string or an object", _WHEN_FIX)
        return v

    @field_validator("backoff_limit")
    @classmethod
    def _backoff(cls, v: int) -> int:
        if not 0 <= v <= MAX_MERGE_BACKOFF:
            raise rule(
                "merge.backoffLimit",
                f"must be between 0 and {MAX_MERGE_BACKOFF} (got {v})",
                "give how many times a failed merge is retried (default 0)",
            )
        return v

    def filled(self, *, image: str | None, machine: str, timeout_seconds: int) -> MergeSpec:
        """This merge with the run's values where it gives none (stored so)."""
        return self.model_copy(
            update={
                "image": self.image if self.image is not None else image,
                "machine": self.machine or machine,
                "timeout_seconds": self.timeout_seconds or timeout_seconds,
            }
        )


def should_run(when: MergeWhen, succeeded: int, total: int) -> bool:
    """Whether the merge runs, ``succeeded`` of the run's ``total`` indices having
    succeeded (all of them ended)."""
    if when == "always":
        return True
    if when == "allSucceeded":
        return succeeded == total
    assert isinstance(when, MinSucceeded)
    return succeeded >= when.min_succeeded


def when_text(when: MergeWhen) -> str:
    """``when`` as the wire spells it, for messages."""
    return when if isinstance(when, str) else f"minSucceeded: {when.min_succeeded}"
