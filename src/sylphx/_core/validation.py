"""Pydantic's validation report turned into a sylphx ValidationError: each broken field
named as the wire spells it (``volumeMounts[0].mountPath``), with the rule and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from typing import Any, get_args

import pydantic
from pydantic import BaseModel

from .errors import ValidationError, shown
from .machines import CPU_MACHINES, MACHINES

__all__ = ["validation_error"]

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
# A tier the schema accepts but admission refuses (GPU) is not offered in the message.
_ADMISSIBLE = ", ".join(repr(m) for m in CPU_MACHINES[:-1]) + f" or {CPU_MACHINES[-1]!r}"
_GPU_NOTE = (
    f"the GPU tiers ({', '.join(m for m in MACHINES if m not in CPU_MACHINES)}) are reserved"
    " and not admitted yet"
)
_FIXES_FOR_MISSING = {"command": 'give the argv to run, e.g. ["python", "train.py"]'}


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside a field's annotation (``list[VolumeMount] | None``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models(arg)


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The model whose fields ``loc`` (a path into ``model``'s input) names last."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        inner = next(_models(field.annotation), None) if field is not None else None
        if inner is None:
            break
        model = inner
    return model


def _loc_text(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """``("volume_mounts", 0, "mountPath")`` -> ``volumeMounts[0].mountPath`` (wire names)."""
    out = ""
    for i, part in enumerate(loc):
        if part == "[key]":  # pydantic's mark for a mapping's key: the name is at fault
            out += " (the name)"
            continue
        if isinstance(part, str):
            if not part.isprintable():  # a NUL, a lone surrogate: shown escaped
                part = repr(part)[1:-1]
            fields = _model_at(model, loc[:i]).model_fields
            if part in fields:
                part = fields[part].alias or part
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_BOUNDS = {
    "greater_than_equal": "must be at least",
    "greater_than": "must be greater than",
    "less_than_equal": "must be at most",
    "less_than": "must be less than",
}


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
        loc = tuple(err["loc"])
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        field = _loc_text(model, loc)
        if err["type"] == "extra_forbidden":
            field, text, fix, near = _unknown(model, loc)
            if near:
                suggested.add(near)
        else:
            field, text, fix = _rule(err, field)
        details.append({"field": field or "body", "rule": text, "fix": fix})
    details = [d for d in details if not (d["rule"] == "is required" and d["field"] in suggested)]
    lines = [f"{d['field']}: {d['rule']}. Fix: {d['fix'].rstrip('.?')}" for d in details]
    return ValidationError("; ".join(lines), details=details)


def _unknown(
    model: type[BaseModel], loc: tuple[int | str, ...]
) -> tuple[str, str, str, str | None]:
    """(field, rule, fix, the field it probably meant) for a field the model lacks."""
    known = _known_fields(_model_at(model, loc[:-1]))
    near = difflib.get_close_matches(str(loc[-1]), known, n=1)
    fix = f"did you mean {near[0]!r}?" if near else f"known fields: {', '.join(known)}"
    meant = _loc_text(model, (*loc[:-1], near[0])) if near else None
    return _loc_text(model, loc), "is not a known field", fix, meant


def _rule(err: Any, field: str) -> tuple[str, str, str]:
    """(field, rule, fix) of one of pydantic's errors other than an unknown field."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, shown(err.get("input"))
    if kind == "sylphx_rule":
        named = str(ctx["field"])  # the rule's own field: more precise within ``loc``
        field = named if named and (not field or named.startswith(field)) else field
        return field, str(ctx["rule"]), str(ctx["fix"])
    if kind in ("literal_error", "enum") and field in ("machine", "merge.machine"):
        return field, f"must be one of {_ADMISSIBLE} (got {got})", f"pick one; {_GPU_NOTE}"
    if kind in ("literal_error", "enum"):
        allowed = str(ctx.get("expected", ""))
        return field, f"must be one of {allowed} (got {got})", "pick one of the allowed values"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return field, f"{_BOUNDS[kind]} {bound} (got {got})", "give a value in range"
    if kind in ("string_too_short", "too_short"):
        return field, f"must not be empty (at least {ctx.get('min_length', 1)})", "give a value"
    if kind in ("string_too_long", "too_long"):
        unit = "characters" if isinstance(err.get("input"), str) else "items"
        return field, f"must have at most {ctx.get('max_length', '?')} {unit}", "shorten it"
    if kind == "string_pattern_mismatch":
        fix = "use only the characters the pattern allows"
        return field, f"must match {ctx.get('pattern', '?')} (got {got})", fix
    if kind == "json_invalid":  # pydantic's loc is the parse position: the body is at fault
        return "body", "is not valid JSON", "send a JSON object (Content-Type: application/json)"
    if kind in _TYPE_RULES:
        text, fix = _TYPE_RULES[kind]
        if kind == "missing":
            fix = _FIXES_FOR_MISSING.get(field, fix)
        return field, text, fix
    return field, str(err.get("msg", kind)), "correct the value"
