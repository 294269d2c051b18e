"""Failure triage: a run's failed indices grouped by how they failed -- the reason's kind,
the exit code and the last non-empty line of stderr with its numbers, hex, paths and ids
normalised -- so that 40 failures read as the two ways they failed, not as 40 logs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, select
from sqlalchemy.orm import Session

from sylphx._core.indexes import compress
from sylphx._core.states import ShardState
from sylphx._core.views import FailureGroup
from sylphx._server.store import AttemptRow, ShardRow

TAIL_BYTES = 4096  # of each failed shard's stderr: its last line is in there
MAX_LINE = 200  # characters of a line kept
_NORMALISE = [
    (re.compile(r"\b[a-z]{2,5}_[0-9a-z]{12,}\b"), "<id>"),  # sylphx ids: wrk_..., vol_...
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"(?<![\w.])(?:/[\w.@+-]+)+/?"), "<path>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
]
_SHARDS, _ATTEMPTS = ShardRow.__table__, AttemptRow.__table__
_FAILED = (  # a run's failed shards with their latest attempt's stderr
    select(
        _SHARDS.c.index,
        _SHARDS.c.exit_code,
        _SHARDS.c.reason,
        _ATTEMPTS.c.stderr_path,
        _ATTEMPTS.c.legacy_log,
    )
    .outerjoin(
        _ATTEMPTS,
        and_(_ATTEMPTS.c.shard_id == _SHARDS.c.id, _ATTEMPTS.c.number == _SHARDS.c.attempts),
    )
    .where(
        _SHARDS.c.run_id == bindparam("run_id"),
        _SHARDS.c.index >= 0,
        _SHARDS.c.state.in_([ShardState.FAILED.value, ShardState.TIMED_OUT.value]),
    )
    .order_by(_SHARDS.c.index)
)


@dataclass(frozen=True)
class Failure:
    index: int
    exit_code: int | None
    reason: str | None
    last_line: str


def normalise(line: str) -> str:
    """``line`` with ids, hex, paths and numbers replaced by ``<id>``, ``<hex>``..."""
    for pattern, token in _NORMALISE:
        line = pattern.sub(token, line)
    return line


def last_line(path: str | None) -> str:
    """The last non-empty line of a log file (its last TAIL_BYTES), "" if none."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(os.fstat(fh.fileno()).st_size - TAIL_BYTES, 0))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:MAX_LINE] if lines else ""


def group(failures: Iterable[Failure]) -> list[FailureGroup]:
    """The failures grouped, the largest group first."""
    groups: dict[tuple[str, int | None, str], list[Failure]] = {}
    for f in failures:
        kind = (f.reason or "Error").split(":")[0].strip() or "Error"
        groups.setdefault((kind, f.exit_code, normalise(f.last_line)), []).append(f)
    out = [
        FailureGroup(
            reason=kind,
            exit_code=code,
            line=line,
            count=len(members),
            indices=compress([m.index for m in members]),
            sample=members[0].last_line,
        )
        for (kind, code, line), members in groups.items()
    ]
    return sorted(out, key=lambda g: (-g.count, g.indices))


def failure_groups(db: Session | Connection, run_id: str) -> list[FailureGroup]:
    """The run's failed (or timed out) indices, grouped; reads each one's stderr tail."""
    rows = db.execute(_FAILED, {"run_id": run_id}).all()
    return group(
        # a log written before secrets were masked at capture (migration 0008) is not read
        Failure(i, code, reason, "" if legacy else last_line(path))
        for i, code, reason, path, legacy in rows
    )
