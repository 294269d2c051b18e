"""Executemany through the driver, for the reconciler's few-hundred-row writes.

SQLAlchemy's Core executemany builds every parameter set anew from the compiled
statement (``construct_params``, a dict per row, each value through its type's bind
processor): ~15-20 us a row, most of what writing a 256-shard batch costs. A
:class:`Batch` compiles its statement once per dialect, keeps the compiled SQL and the
bind processors of its parameters in order, and hands the converted rows to the DB-API
cursor's ``executemany`` through ``Connection.exec_driver_sql`` (so engine events and
the connection's transaction still apply). Values are converted by the same
processors SQLAlchemy would use (a timestamp written here reads back as one written
through the ORM); a batch usually repeats a value (``now``), so each distinct value of a
processed column is converted once per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.sql.dml import Insert, Update

Processor = Callable[[Any], Any]


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
        plan = self._plan(conn.dialect)
        missing = [name for name in plan.names if name not in rows[0]]
        if missing:
            raise ValueError(f"batch parameters missing: {', '.join(missing)}")
        columns = []
        for name, process in zip(plan.names, plan.processors, strict=True):
            values = [row[name] for row in rows]
            columns.append(values if process is None else _convert(process, values))
        params: list[Any] = list(zip(*columns, strict=True))
        if not plan.positional:  # named placeholders (psycopg): a mapping per row
            params = [dict(zip(plan.names, values, strict=True)) for values in params]
        return conn.exec_driver_sql(plan.sql, params).rowcount


def _convert(process: Processor, values: list[Any]) -> list[Any]:
    """``values`` through ``process``, each distinct one once (None stays None)."""
    seen: dict[Any, Any] = {None: None}
    out = []
    for value in values:
        try:
            converted = seen[value]
        except KeyError:
            converted = seen[value] = process(value)
        except TypeError:  # unhashable (a JSON document): no memo
            converted = process(value)
        out.append(converted)
    return out
