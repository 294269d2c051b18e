"""Executemany through the driver, for the reconciler's few-hundred-row writes.

SQLAlchemy's Core executemany builds every parameter set anew from the compiled
statement (``construct_params``, a dict per row, each value through its type's bind
processor): ~15-20 us a row, most of what writing a 256-shard batch costs. A
:class:`Batch` compiles its statement once per dialect, keeps the compiled SQL and the
bind processors of its parameters in order, and hands the converted rows to the DB-API
cursor's ``executemany`` through ``Connection.exec_driver_sql`` (so engine events and
the connection's transaction still apply). Values are converted by the same
processors SQLAlchemy would use, so a timestamp written here reads back as one written
through the ORM. Values repeat (one ``now`` for every shard a pass starts, an exit's end on its
attempt, shard and usage row), so each distinct value is converted once while a
connection remembers it: that halves the cost of a 256-shard write on SQLite
(docs/adr/0006).

The compiled statement's ``positiontup`` and ``binds`` are SQLAlchemy internals: the
dependency is pinned to one minor version, and ``tests/test_batch.py`` checks a batch
against the ORM on both stores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.sql.dml import Insert, Update

Processor = Callable[[Any], Any]
_MEMOS = "sylphx.batch.converted"  # key of the per-connection memo in Connection.info
MEMO_SIZE = 8192  # converted values remembered per processor and connection


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    names: tuple[str, ...]  # the parameters, in the order the SQL takes them
    processors: tuple[Processor | None, ...]
    positional: bool


class Batch:
    """One INSERT or UPDATE run with many parameter sets, each a mapping of its bind
    parameter names (for an INSERT without explicit values: the column keys given as
    ``keys``) to values; every parameter must be given."""

    def __init__(self, stmt: Insert | Update, keys: Sequence[str] | None = None) -> None:
        self._stmt = stmt
        self._keys = list(keys) if keys is not None else None
        self._plans: dict[str, _Plan] = {}

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            compiled = self._stmt.compile(
                dialect=dialect, column_keys=self._keys, for_executemany=True
            )
            positional = bool(compiled.positional)
            names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
            types = [compiled.binds[name].type for name in names]
            processors = tuple(t.dialect_impl(dialect).bind_processor(dialect) for t in types)
            plan = self._plans[dialect.name] = _Plan(compiled.string, names, processors, positional)
        return plan

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run the statement once per row of ``rows``; the number of rows matched."""
        if not rows:
            return 0
        names = self._plan(conn.dialect).names
        _check(names, rows[0])
        return self.execute_columns(conn, {name: [row[name] for row in rows] for name in names})

    def execute_columns(self, conn: Connection, columns: Mapping[str, Sequence[Any]]) -> int:
        """:meth:`execute` with the rows given by column: ``columns[name][i]`` is parameter
        ``name`` of row ``i`` (no mapping built per row)."""
        plan = self._plan(conn.dialect)
        _check(plan.names, columns)
        values = []
        for name, process in zip(plan.names, plan.processors, strict=True):
            column = columns[name]
            values.append(column if process is None else _convert(conn, process, column))
        params: list[Any] = list(zip(*values, strict=True))
        if not params:
            return 0
        if not plan.positional:  # named placeholders (psycopg): a mapping per row
            params = [dict(zip(plan.names, row, strict=True)) for row in params]
        return conn.exec_driver_sql(plan.sql, params).rowcount


def _convert(conn: Connection, process: Processor, column: Sequence[Any]) -> list[Any]:
    """``[process(v) for v in column]``, each distinct (hashable) value converted once per
    connection while it is remembered: a pass writes an exit's end to its attempt, its
    shard and its usage row, three batches. The memo lives in the pooled connection's
    ``info`` (no state shared between engines or connections) and is bounded."""
    memos: dict[Processor, dict[Any, Any]] = conn.info.setdefault(_MEMOS, {})
    done = memos.setdefault(process, {})
    if len(done) > MEMO_SIZE:
        done.clear()
    out = []
    for value in column:
        try:
            converted = done[value]
        except KeyError:
            converted = done[value] = process(value)
        except TypeError:  # unhashable (a JSON document): as it is
            converted = process(value)
        out.append(converted)
    return out


def _check(names: Sequence[str], given: Mapping[str, Any]) -> None:
    missing = [name for name in names if name not in given]
    if missing:
        raise ValueError(f"batch parameters missing: {', '.join(missing)}")
