"""The run spec: one pydantic model shared by the API, the SDK and the CLI.

Wire JSON uses the spec page's camelCase names; Python uses snake_case. Every
rule violation is reported with the field, the rule and the fix.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from ._errors import ValidationError
from ._machines import DEFAULT_MACHINE, MachineName
from ._paths import SYSTEM_PATHS, PathRuleError, is_within, normalise

__all__ = ["CompletionMode", "RunSpec", "VolumeMount"]

CompletionMode = Literal["Indexed", "NonIndexed"]
AdmissionFallback = Literal["fail", "opportunistic"]

MAX_PARALLELISM = 256
MAX_TIMEOUT_SECONDS = 86400
DEFAULT_TIMEOUT_SECONDS = 3600
MAX_BACKOFF_LIMIT = 50
DEFAULT_BACKOFF_LIMIT = 3

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def rule(field: str, text: str, fix: str) -> PydanticCustomError:
    """A rule violation carrying its field, rule text and fix for the error translator."""
    return PydanticCustomError("sylphx_rule", "{rule}", {"field": field, "rule": text, "fix": fix})


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class VolumeMount(_Model):
    """A volume mounted read-write into every shard at ``mount_path``."""

    volume_id: str
    mount_path: str

    @field_validator("volume_id")
    @classmethod
    def _volume_id(cls, v: str) -> str:
        if not v.strip():
            raise rule(
                "volumeId", "must not be empty", "give the id of a volume (sylphx volumes list)"
            )
        return v

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, v: str) -> str:
        fix = "use an absolute path of your own, e.g. /cache or /data/out"
        try:
            norm = normalise(v)
        except PathRuleError as exc:
            raise rule("mountPath", str(exc), fix) from None
        if norm == "/" or any(is_within(norm, p) for p in SYSTEM_PATHS):
            raise rule("mountPath", f"must not be mounted over a system path (got {v!r})", fix)
        return norm


class RunSpec(_Model):
    """What to run and how to fan it out. Defaults are filled in on validation."""

    image: str | None = None
    command: list[str] | None = None  # with an image: replaces its CMD (ENTRYPOINT kept)
    env: dict[str, str] = Field(default_factory=dict)
    parallelism: int = 1
    completion_mode: CompletionMode | None = None
    gang_scheduling: bool | None = None
    backoff_limit_per_index: int | None = None
    machine: MachineName = DEFAULT_MACHINE  # type: ignore[assignment]
    volume_mounts: list[VolumeMount] = Field(default_factory=list)
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    working_dir: str | None = None  # where the command starts; the SDK/CLI default to cwd
    network: bool = True  # false: the shards get no network at all
    secrets: list[str] = Field(default_factory=list)  # names of the org's secrets, as env vars
    admission_timeout_seconds: int | None = None  # gang runs: give up waiting after this
    admission_fallback: AdmissionFallback | None = None  # ...or carry on as opportunistic

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
        try:
            return normalise(v)  # stored spelled one way: //w/./job -> /w/job
        except PathRuleError as exc:
            fix = "give an absolute path without '..', e.g. /work/job"
            raise rule("workingDir", str(exc), fix) from None

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _ENV_NAME.match(name) or name.startswith("SYLPHX_"):
                raise rule(
                    "secrets",
                    f"{name!r} is not a valid secret name",
                    "use an env-var style name such as DB_URL (not SYLPHX_*)",
                )
        if len(set(v)) != len(v):
            raise rule("secrets", "names a secret twice", "list each secret once")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v or not v[0]:
            raise rule("command", "must be a non-empty argv list", 'e.g. ["python", "train.py"]')
        if any("\0" in arg for arg in v):
            raise rule("command", "must not contain NUL bytes", "remove the NUL characters")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _ENV_NAME.match(name):
                raise rule(
                    "env",
                    f"{name!r} is not a valid variable name",
                    "use letters, digits and underscores, not starting with a digit",
                )
            if name.startswith("SYLPHX_"):
                raise rule(
                    "env",
                    f"{name!r} is reserved: SYLPHX_* variables are set by the platform",
                    "rename the variable",
                )
            if "\0" in value:
                raise rule("env", f"the value of {name!r} contains a NUL byte", "remove it")
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
        seen: set[str] = set()
        for mount in v:
            if mount.mount_path in seen:
                raise rule(
                    "volumeMounts",
                    f"mountPath {mount.mount_path} is used twice",
                    "give every mount its own path",
                )
            seen.add(mount.mount_path)
        return v

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

    def as_opportunistic(self) -> RunSpec:
        """This spec continuing as an opportunistic run (the admission fallback)."""
        wire = self.to_wire() | {
            "gangScheduling": False,
            "admissionTimeoutSeconds": None,
            "admissionFallback": None,
            "backoffLimitPerIndex": None,
        }
        return RunSpec.parse(wire)

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


# -- error translation -----------------------------------------------------

_TYPE_RULES: dict[str, tuple[str, str]] = {
    "missing": ("is required", "add it to the request"),
    "int_type": ("must be a whole number", "give an integer, e.g. 9"),
    "int_parsing": ("must be a whole number", "give an integer, e.g. 9"),
    "int_from_float": ("must be a whole number", "give an integer, e.g. 9"),
    "bool_type": ("must be true or false", "give a boolean"),
    "bool_parsing": ("must be true or false", "give a boolean"),
    "string_type": ("must be a string", "give a string"),
    "list_type": ("must be a list", 'give a JSON array, e.g. ["python", "train.py"]'),
    "dict_type": ("must be an object", 'give a JSON object, e.g. {"KEY": "value"}'),
    "model_type": ("must be an object", "give a JSON object"),
    "model_attributes_type": ("must be an object", "give a JSON object"),
}
_FIXES_FOR_MISSING = {"command": 'give the argv to run, e.g. ["python", "train.py"]'}


def _loc_text(loc: tuple[int | str, ...]) -> str:
    """``("volume_mounts", 0, "mountPath")`` -> ``volumeMounts[0].mountPath`` (wire names)."""
    out = ""
    for part in loc:
        if isinstance(part, str) and part in _WIRE_NAMES:
            part = _WIRE_NAMES[part]
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known_fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def validation_error(
    exc: pydantic.ValidationError | Sequence[Any], model: type[BaseModel]
) -> ValidationError:
    """Turn pydantic's report (or FastAPI's error list) into a sylphx ValidationError
    whose details name the field, the rule and the fix."""
    errors = exc.errors(include_url=False) if isinstance(exc, pydantic.ValidationError) else exc
    details: list[dict[str, Any]] = []
    suggested: set[str] = set()  # fields a typo probably meant: their "is required" is noise
    for err in errors:
        ctx = err.get("ctx") or {}
        loc = tuple(err["loc"])
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        kind = err["type"]
        field = _loc_text(loc)
        if kind == "sylphx_rule":
            field = field or str(ctx["field"])
            text, fix = str(ctx["rule"]), str(ctx["fix"])
        elif kind == "extra_forbidden":
            name = str(loc[-1])
            known = _known_fields(VolumeMount if "volumeMounts" in field else model)
            near = difflib.get_close_matches(name, known, n=1)
            if near:
                suggested.add(_loc_text((*loc[:-1], near[0])))
            text = "is not a known field"
            fix = f"did you mean {near[0]!r}?" if near else f"known fields: {', '.join(known)}"
        elif kind == "literal_error":
            allowed = str(ctx.get("expected", ""))
            text = f"must be one of {allowed} (got {err.get('input')!r})"
            fix = "pick one of the allowed values"
        elif kind == "json_invalid":
            text, fix = "is not valid JSON", "send a JSON object with the run spec"
        elif kind in _TYPE_RULES:
            text, fix = _TYPE_RULES[kind]
            if kind == "missing":
                fix = _FIXES_FOR_MISSING.get(field, fix)
        else:
            text, fix = str(err.get("msg", kind)), "correct the value"
        details.append({"field": field or "body", "rule": text, "fix": fix})
    details = [d for d in details if not (d["rule"] == "is required" and d["field"] in suggested)]
    lines = [f"{d['field']}: {d['rule']}. Fix: {d['fix'].rstrip('.?')}" for d in details]
    return ValidationError("; ".join(lines), details=details)


_WIRE_NAMES = {
    name: field.alias or name
    for model in (RunSpec, VolumeMount)
    for name, field in model.model_fields.items()
}
