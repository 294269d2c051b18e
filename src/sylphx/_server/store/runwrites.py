"""Changed runs written in batches at flush, with the records' compare-and-set UPDATE.

Runs stay ORM objects (the API and the reconciler read them with their relationships),
but SQLAlchemy's unit of work sends a versioned UPDATE one row at a time: it needs each
row's count to tell a stale one. A reconcile pass that starts or ends N runs paid N
statements twice (P7: ~20% of the pass's CPU). So every writer session's
``before_flush`` (:func:`install`) writes its changed runs itself: one executemany per set
of changed columns, ``UPDATE runs SET ..., version = :seen + 1 WHERE id = :id AND
version = :seen`` (:func:`.records.compare_and_set`), a short row count raising
``StaleDataError`` as the ORM would. It then marks what it wrote as the rows' committed
state, and a run with nothing else changed as clean (in the transaction's record of what
it altered, as the ORM's flush does), so the ORM's own flush has nothing left to do for
it; anything else (new rows, relationships, deletes) the ORM flushes as before.

What changed is read from SQLAlchemy's own bookkeeping (the identity map's set of
modified states, each state's ``committed_state``: the values before the change), the
writes go under a subtransaction as the ORM's flush does (a failure leaves the session
needing a rollback), and the clean runs are marked so with the calls the ORM's flush
ends with (``_commit_all_states``, ``_register_altered``): internals of the minor
version the project pins, as :mod:`.batch` does. Asking each column's public
``history`` instead cost more than the UPDATEs it saved (measured: 8 runs changed per
transaction, 1.8-2.0 ms with the ORM's UPDATEs, 2.5-3.2 through ``history``, 1.5-1.65
this way). ``tests/test_records.py`` counts the statements.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.state import InstanceState

from .records import RUNS, compare_and_set
from .schema import RunRow

__all__ = ["install"]

# the columns a flush may write (the id never changes; the version is ours to bump)
_COLUMN_SET = frozenset(c.key for c in RUNS.columns if c.key not in ("id", "version"))


def install(sessions: sessionmaker[Session]) -> None:
    """Write the changed runs of ``sessions``' sessions in batches at each flush."""
    event.listen(sessions, "before_flush", _flush_runs)


def _flush_runs(s: Session, flush_context: Any, instances: Any) -> None:
    groups: dict[tuple[str, ...], list[tuple[RunRow, dict[str, Any]]]] = {}
    done: list[InstanceState[Any]] = []  # runs with nothing left for the ORM to flush
    for state in s.identity_map._modified:  # the states changed since their last flush
        obj = state.obj()
        if type(obj) is not RunRow:
            continue
        changed = {}
        for key, was in state.committed_state.items():  # what each changed column was
            if key in _COLUMN_SET:
                now = state.dict.get(key)
                if now != was:
                    changed[key] = now
        if changed:
            groups.setdefault(tuple(sorted(changed)), []).append((obj, changed))
        if _COLUMN_SET.issuperset(state.committed_state):  # no relationship changed
            done.append(state)
    if groups:
        _write(s, groups)
    # Marked clean and recorded in the transaction, as the ORM's flush does with what it
    # wrote (a savepoint rolled back expires them): with no run left modified, its flush
    # returns at once. Else it would look at each versioned run again, every column's
    # history, to find nothing to send (P7: ~8% of a reconcile pass).
    InstanceState._commit_all_states([(state, state.dict) for state in done], s.identity_map)
    s._register_altered(done)


def _write(s: Session, groups: dict[tuple[str, ...], list[tuple[RunRow, dict[str, Any]]]]) -> None:
    """Each group's runs in one compare-and-set executemany."""
    # As the ORM's flush does: under a subtransaction, so a failure (a stale row) leaves
    # the session needing a rollback, never half written and usable; rows in id order,
    # so two writers lock the runs they share in one order (no deadlock on PostgreSQL).
    flush = s._autobegin_t()._begin()
    try:
        for keys in sorted(groups):
            runs = sorted(groups[keys], key=lambda run_changed: run_changed[0].id)
            seen = [run.version for run, _ in runs]
            ids = [run.id for run, _ in runs]
            values = {key: [changed[key] for _, changed in runs] for key in keys}
            compare_and_set(s.connection(), RUNS, ids, seen, values)
            for (run, changed), version in zip(runs, seen, strict=True):
                for key, value in changed.items():
                    set_committed_value(run, key, value)
                set_committed_value(run, "version", version + 1)
    except BaseException:
        flush.rollback(_capture_exception=True)
        raise
    flush.commit()
