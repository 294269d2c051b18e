"""Shard and attempt records: batched writes are compare-and-sets, like the ORM's (both stores)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from conftest import database_url_for
from sylphx._server.store import ShardRow, make_engine, migrate, session_factory
from sylphx._server.store.records import ShardRecord, shard_columns, update_shards
from sylphx._server.store.schema import RunRow
from sylphx._server.tenancy import orgs

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _store(tmp_path: Path, shards: int) -> sessionmaker[Session]:
    engine = make_engine(database_url_for(tmp_path))
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        orgs.create_org(s, "acme", plan="free", now=NOW, org_id="org_a")
        run = RunRow(
            id="wrk_a", org_id="org_a", state="running", spec={}, parallelism=shards,
            machine="nano", gang=False, created_at=NOW,
        )  # fmt: skip
        run.shards = [
            ShardRow(index=i, state="pending", attempts=0, failures=0) for i in range(shards)
        ]
        s.add(run)
    return sessions


def _records(s: Session) -> list[ShardRecord]:
    rows = s.execute(select(*shard_columns()).order_by(ShardRow.index)).all()
    return [ShardRecord(*row) for row in rows]


def test_a_batch_writes_every_record_and_bumps_each_version(tmp_path: Path) -> None:
    sessions = _store(tmp_path, 5)
    with sessions.begin() as s:
        shards = _records(s)
        for shard in shards:
            shard.state, shard.attempts = "running", 1
        update_shards(s, shards, ("state", "attempts"))
        assert [shard.version for shard in shards] == [2] * 5
    with sessions.begin() as s:
        assert [(r.state, r.attempts, r.version) for r in _records(s)] == [("running", 1, 2)] * 5


def test_a_row_changed_since_it_was_read_fails_the_whole_batch(tmp_path: Path) -> None:
    sessions = _store(tmp_path, 3)
    with sessions.begin() as s:
        shards = _records(s)
    with sessions.begin() as s:  # someone else cancels shard 1 meanwhile
        row = s.scalars(select(ShardRow).where(ShardRow.index == 1)).one()
        row.state = "cancelled"
    with pytest.raises(StaleDataError, match="expected to update 3 row"), sessions.begin() as s:
        for shard in shards:
            shard.state = "running"
        update_shards(s, shards, ("state",))
    with sessions.begin() as s:  # rolled back: nothing of the batch was kept
        assert [r.state for r in _records(s)] == ["pending", "cancelled", "pending"]


def test_records_are_not_written_beside_orm_copies_of_the_same_rows(tmp_path: Path) -> None:
    """One write path per row in a session: a record write refuses to run while the
    session holds the same table's rows as ORM objects (which copy wins would hang on
    flush order), and nothing is written."""
    sessions = _store(tmp_path, 2)
    with pytest.raises(RuntimeError, match="only as records"), sessions.begin() as s:
        held = s.scalars(select(ShardRow).where(ShardRow.index == 0)).one()  # noqa: F841
        shards = _records(s)
        shards[0].state = "running"
        update_shards(s, shards[:1], ("state",))
    with sessions.begin() as s:
        assert [r.state for r in _records(s)] == ["pending", "pending"]


def _runs(sessions: sessionmaker[Session], n: int) -> None:
    with sessions.begin() as s:
        for i in range(1, n):
            run = RunRow(
                id=f"wrk_{i}", org_id="org_a", state="queued", spec={}, parallelism=1,
                machine="nano", gang=False, created_at=NOW,
            )  # fmt: skip
            s.add(run)


def test_changed_runs_are_written_in_one_statement_per_set_of_columns(tmp_path: Path) -> None:
    """A writer session's changed runs (ORM objects) go out as one compare-and-set
    executemany per set of changed columns at flush, not an UPDATE per row; a value set
    back to what it was is not written."""
    sessions = _store(tmp_path, 0)
    _runs(sessions, 4)
    engine = sessions.kw["bind"]
    sent: list[tuple[str, int]] = []

    def count(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if sql.lstrip().upper().startswith("UPDATE RUNS"):
            sent.append((sql, len(params) if many else 1))

    event.listen(engine, "before_cursor_execute", count)
    with sessions.begin() as s:
        runs = s.scalars(select(RunRow).order_by(RunRow.id)).all()
        for run in runs[:3]:
            run.state, run.started_at = "running", NOW
        runs[3].message = "waiting"
        runs[3].state = runs[3].state  # unchanged: nothing to write
    assert sorted(rows for _, rows in sent) == [1, 3]
    assert all("version" in sql.split("WHERE")[1] for sql, _ in sent)  # compare-and-set
    with sessions.begin() as s:
        got = {r.id: (r.state, r.message, r.version) for r in s.scalars(select(RunRow))}
    assert got == {
        "wrk_1": ("running", None, 2), "wrk_2": ("running", None, 2),
        "wrk_3": ("running", None, 2), "wrk_a": ("running", "waiting", 2),
    }  # fmt: skip


def test_a_run_changed_since_it_was_read_fails_the_flush_as_stale(tmp_path: Path) -> None:
    sessions = _store(tmp_path, 0)
    _runs(sessions, 3)
    with sessions.begin() as s:
        runs = s.scalars(select(RunRow).order_by(RunRow.id)).all()
    with sessions.begin() as s:  # someone else cancels wrk_2 meanwhile
        s.get_one(RunRow, "wrk_2").state = "cancelled"
    with pytest.raises(StaleDataError), sessions.begin() as s:
        for run in runs:
            s.add(run)
            run.state = "running"
    with sessions.begin() as s:  # rolled back whole: nobody's change is lost
        got = {r.id: r.state for r in s.scalars(select(RunRow))}
    assert got == {"wrk_1": "queued", "wrk_2": "cancelled", "wrk_a": "running"}


def test_a_run_written_under_a_rolled_back_savepoint_is_read_again(tmp_path: Path) -> None:
    """The bulkhead redoes a failed step's runs one by one after rolling its savepoint
    back: a run written (in a batch) under that savepoint must come back as the store has
    it, not keep the values that were rolled back -- as the ORM's own flush does."""
    sessions = _store(tmp_path, 0)
    _runs(sessions, 2)
    with sessions.begin() as s:
        run = s.get_one(RunRow, "wrk_1")
        with s.begin_nested() as savepoint:
            run.state, run.message = "running", "started"
            s.flush()
            savepoint.rollback()
        assert (run.state, run.message, run.version) == ("queued", None, 1)
        run.state = "cancelled"  # written again, from the store's version
    with sessions.begin() as s:
        again = s.get_one(RunRow, "wrk_1")
        assert (again.state, again.message, again.version) == ("cancelled", None, 2)


def test_a_stale_run_leaves_the_session_needing_a_rollback_with_nothing_written(
    tmp_path: Path,
) -> None:
    """As with the ORM's own flush: a caller that catches the StaleDataError cannot go on
    and commit the runs of the batch that did match."""
    sessions = _store(tmp_path, 0)
    _runs(sessions, 4)
    s = sessions()
    runs = s.scalars(select(RunRow).order_by(RunRow.id)).all()
    s.commit()
    with sessions.begin() as other:  # someone else writes wrk_2 meanwhile
        other.get_one(RunRow, "wrk_2").message = "theirs"
    for run in runs:
        run.state = "running"
    with pytest.raises(StaleDataError):
        s.flush()
    with pytest.raises(PendingRollbackError):
        s.commit()
    s.rollback()
    s.close()
    with sessions.begin() as check:
        got = {r.id: r.state for r in check.scalars(select(RunRow))}
    assert got == {"wrk_1": "queued", "wrk_2": "queued", "wrk_3": "queued", "wrk_a": "running"}


def test_runs_changed_in_any_order_share_their_statement(tmp_path: Path) -> None:
    sessions = _store(tmp_path, 0)
    _runs(sessions, 3)
    sent: list[str] = []
    event.listen(
        sessions.kw["bind"],
        "before_cursor_execute",
        lambda conn, cursor, sql, *rest: sent.append(sql) if sql.startswith("UPDATE") else None,
    )
    with sessions.begin() as s:
        one, two = s.get_one(RunRow, "wrk_1"), s.get_one(RunRow, "wrk_2")
        one.state, one.message = "running", "x"
        two.message, two.state = "x", "running"
    assert len(sent) == 1


def test_runs_written_in_batches_leave_the_orm_nothing_to_flush(tmp_path: Path) -> None:
    """Runs whose changed columns the batch wrote are marked clean, so the ORM's flush
    has no work (it would otherwise re-read each versioned run's every column); a run
    with a relationship changed too is still the ORM's to flush (its new shard)."""
    sessions = _store(tmp_path, 0)
    _runs(sessions, 3)
    orm_flushes: list[int] = []
    event.listen(sessions, "after_flush", lambda s, ctx: orm_flushes.append(len(ctx.states)))
    with sessions.begin() as s:
        for run in s.scalars(select(RunRow)):
            run.state = "running"
        s.flush()
        assert not s.dirty  # written, and clean
    assert orm_flushes == []
    with sessions.begin() as s:
        run = s.get_one(RunRow, "wrk_1")
        run.state = "succeeded"
        run.shards.append(ShardRow(index=0, state="pending", attempts=0, failures=0))
    assert len(orm_flushes) == 1
    with sessions.begin() as s:
        again = s.get_one(RunRow, "wrk_1")
        assert (again.state, again.version, len(again.shards)) == ("succeeded", 3, 1)
        assert {r.state for r in s.scalars(select(RunRow))} == {"running", "succeeded"}
