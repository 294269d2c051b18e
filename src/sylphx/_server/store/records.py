"""Shards and attempts as plain records, written in batches with compare-and-set UPDATEs.

A reconcile pass can start or settle hundreds of shards at once. Through ORM objects
that costs about half a millisecond per shard in SQLAlchemy's unit of work, and the
ORM's bulk UPDATE by primary key sends a versioned UPDATE one row at a time (13x slower
than this module on SQLite, 4.5x on PostgreSQL: docs/adr/0006). So the reconciler reads
and writes shards and attempts only as these records -- never as ORM objects in the same
session (one write path per row; :func:`update_shards` refuses to run beside ORM copies)
-- changes them (status changes go through ``controller/transitions.py``), and writes
them back with one executemany per table: ``UPDATE ... SET ..., version = :seen + 1
WHERE id = :id AND version = :seen``, the same compare-and-set the ORM's
``version_id_col`` does. A row changed by someone else since it was read makes the row
count fall short, which raises ``StaleDataError`` exactly as the ORM would (the pass is
rolled back and retried). Runs, which stay ORM objects, are written by the same
:func:`compare_and_set` at flush (:mod:`.runwrites`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, Table, and_, bindparam, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from .batch import Batch
from .schema import AttemptRow, RunRow, ShardRow


@dataclass(slots=True)
class ShardRecord:
    """A row of ``shards`` (see :class:`ShardRow`)."""

    id: int
    run_id: str
    index: int
    state: str
    attempts: int
    failures: int
    preemptions: int
    exit_code: int | None
    reason: str | None
    started_at: datetime | None
    ended_at: datetime | None
    version: int
    not_before: datetime | None = None  # retryBackoff: not started again before this
    ignored: int = 0  # failures an Ignore rule of the failurePolicy retried


@dataclass(slots=True)
class AttemptRecord:
    """The columns of a row of ``attempts`` (see :class:`AttemptRow`) that the reconciler
    reads and writes."""

    id: int
    shard_id: int
    run_id: str
    number: int
    state: str
    handle: str | None
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    reason: str | None
    stop_reason: str | None
    stop_requested_at: datetime | None
    killed_at: datetime | None
    stdout_path: str | None
    stderr_path: str | None
    log_truncated: str | None
    version: int


SHARD_COLUMNS = tuple(f.name for f in fields(ShardRecord))  # a record is its row, in order
ATTEMPT_COLUMNS = tuple(f.name for f in fields(AttemptRecord))
SHARDS: Table = ShardRow.__table__  # type: ignore[assignment]
ATTEMPTS: Table = AttemptRow.__table__  # type: ignore[assignment]
RUNS: Table = RunRow.__table__  # type: ignore[assignment]


def shard_columns() -> list[Column[Any]]:
    """The ``shards`` columns a :class:`ShardRecord` is built from, in order."""
    return [SHARDS.c[name] for name in SHARD_COLUMNS]


def attempt_columns() -> list[Column[Any]]:
    """The ``attempts`` columns an :class:`AttemptRecord` is built from, in order."""
    return [ATTEMPTS.c[name] for name in ATTEMPT_COLUMNS]


def update_shards(s: Session, shards: Sequence[ShardRecord], keys: Sequence[str]) -> None:
    """Write ``keys`` of every record in ``shards`` (compare-and-set, see module doc)."""
    _update(s, ShardRow, shards, keys)


def update_attempts(s: Session, attempts: Sequence[AttemptRecord], keys: Sequence[str]) -> None:
    """Write ``keys`` of every record in ``attempts`` (compare-and-set, see module doc)."""
    _update(s, AttemptRow, attempts, keys)


@functools.cache
def _compare_and_set(table: Table, keys: tuple[str, ...]) -> Batch:
    """``UPDATE table SET keys..., version = :b_next WHERE id = :b_id AND version = :b_seen``."""
    return Batch(
        update(table)
        .where(and_(table.c.id == bindparam("b_id"), table.c.version == bindparam("b_seen")))
        .values(
            {
                **{key: bindparam(f"b_{key}", type_=table.c[key].type) for key in keys},
                "version": bindparam("b_next"),
            }
        )
    )


def _update(
    s: Session,
    row_class: type[ShardRow] | type[AttemptRow],
    records: Sequence[ShardRecord] | Sequence[AttemptRecord],
    keys: Sequence[str],
) -> None:
    if not records:
        return
    _one_write_path(s, row_class)
    table = SHARDS if row_class is ShardRow else ATTEMPTS
    ids, seen = [rec.id for rec in records], [rec.version for rec in records]
    values = {key: [getattr(rec, key) for rec in records] for key in keys}
    compare_and_set(s.connection(), table, ids, seen, values)
    for rec in records:
        rec.version += 1


def compare_and_set(
    conn: Connection,
    table: Table,
    ids: Sequence[Any],
    seen: Sequence[int],
    values: Mapping[str, Sequence[Any]],
) -> None:
    """For every i, one executemany: ``UPDATE table SET key = values[key][i]...,
    version = seen[i] + 1 WHERE id = ids[i] AND version = seen[i]``; ``StaleDataError``
    (as the ORM raises) when a row was changed by someone else since it was read."""
    columns = {
        "b_id": list(ids),
        "b_seen": list(seen),
        "b_next": [version + 1 for version in seen],
        **{f"b_{key}": list(column) for key, column in values.items()},
    }
    matched = _compare_and_set(table, tuple(values)).execute_columns(conn, columns)
    if matched != len(ids):
        raise StaleDataError(
            f"UPDATE statement on table {table.name!r} expected to update {len(ids)}"
            f" row(s); {matched} were matched."
        )


def _one_write_path(s: Session, row_class: type[ShardRow] | type[AttemptRow]) -> None:
    """Refuse to write records of rows the session also holds as ORM objects: the two
    copies would disagree, and which one the store ends with would hang on flush order."""
    for key in s.identity_map.keys():  # noqa: SIM118 - an IdentityMap is not a dict
        if key[0] is row_class:
            raise RuntimeError(
                f"{row_class.__tablename__} rows are loaded as ORM objects in this session:"
                " a reconcile pass reads and writes them only as records"
            )
