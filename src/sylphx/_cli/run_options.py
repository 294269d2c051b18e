"""The options of ``sylphx run`` that need parsing: KEY=VALUE, ID:/PATH, JSON policies,
backoffs, merge conditions, and the tiers and modes offered as choices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import click

from sylphx._core.machines import CPU_MACHINES, MACHINES
from sylphx._core.spec import CompletionMode

from .common import Choice

__all__ = [
    "COMPLETION_MODE",
    "MACHINE",
    "parse_backoff",
    "parse_env",
    "parse_policy",
    "parse_volumes",
    "parse_when",
]

_GPU = [name for name in MACHINES if name not in CPU_MACHINES]
# Only the tiers admission admits are offered (and completed); the GPU ones are refused.
MACHINE = Choice(CPU_MACHINES, note=f"; the GPU tiers ({', '.join(_GPU)}) are not admitted yet")
COMPLETION_MODE = Choice(get_args(CompletionMode))


def parse_env(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """``--env KEY=VALUE`` (repeatable) as a mapping."""
    env: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(
                f"{item!r} is not KEY=VALUE. Fix: e.g. --env SEED=42 (repeat for more)"
            )
        env[name] = value
    return env


def parse_policy(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """``--failure-policy``: a JSON list of rules, inline or ``@file``."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise click.BadParameter(
            "is not JSON. Fix: e.g. --failure-policy"
            ' \'[{"onExitCodes": {"operator": "In", "values": [42]}, "action": "FailIndex"}]\''
            " or @policy.json"
        ) from None


def parse_backoff(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> dict[str, float] | None:
    """``--retry-backoff INITIAL[,FACTOR[,MAX]]`` in seconds."""
    if value is None:
        return None
    names = ("initial_seconds", "factor", "max_seconds")
    try:
        numbers = [float(part) for part in value.split(",")]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 3:
        raise click.BadParameter(
            f"{value!r} is not INITIAL[,FACTOR[,MAX]]. Fix: e.g. --retry-backoff 10,2,360"
        )
    return dict(zip(names, numbers, strict=False))


def parse_when(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """``--merge-when allSucceeded|always|K`` (K: at least K indices succeeded)."""
    if value is None or value in ("allSucceeded", "always"):
        return value
    if value.isdigit():
        return {"min_succeeded": int(value)}
    raise click.BadParameter(f"{value!r}: give allSucceeded, always or a number of indices K")


def parse_volumes(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[dict[str, str]]:
    """``--volume ID:/PATH`` (repeatable) as volume mounts."""
    mounts = []
    for item in values:
        volume_id, sep, path = item.partition(":")
        if not sep or not volume_id or not path:
            raise click.BadParameter(
                f"{item!r} is not ID:/path. Fix: e.g. --volume vol_abc123:/cache"
                " (ids from `sylphx volumes list`)"
            )
        mounts.append({"volume_id": volume_id, "mount_path": path})
    return mounts
