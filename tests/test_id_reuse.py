"""Attempt ids are never handed out twice, so a deleted run's usage (billing history, kept
by its attempt's id) never collides with a later run's (migration 0015), on the session's
store (SYLPHX_TEST_STORE)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, delete, insert, select, text

from conftest import Server, database_url_for
from sylphx._server.store import (
    AttemptRow,
    Base,
    OrgRow,
    RunRow,
    ShardRow,
    UsageRow,
    make_engine,
    migrate,
)
from sylphx._server.store.db import MIGRATIONS

_NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def test_a_run_after_the_newest_was_deleted_succeeds_and_both_are_billed(
    server: Server,
) -> None:
    first = server.submit(command=["true"], parallelism=2, machine="nano")
    assert server.wait(first["id"])["status"] == "succeeded"
    assert server.http.delete(f"/v1/runs/{first['id']}").status_code == 204
    assert server.http.get(f"/v1/runs/{first['id']}").status_code == 404

    second = server.submit(command=["true"], parallelism=2, machine="nano")
    done = server.wait(second["id"])
    assert done["status"] == "succeeded", done
    report = server.http.get("/v1/usage").json()
    assert sorted(r["runId"] for r in report["byRun"]) == sorted([first["id"], second["id"]])
    with server.plane.reads() as s:
        usage = s.execute(select(UsageRow.run_id, UsageRow.attempt_id)).all()
        live = s.scalars(select(AttemptRow.id).where(AttemptRow.run_id == second["id"])).all()
    assert sorted(run for run, _ in usage) == sorted([first["id"]] * 2 + [second["id"]] * 2)
    old = [attempt for run, attempt in usage if run == first["id"]]
    assert min(live) > max(old)  # the deleted run's ids were not handed out again


def _cfg(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def _org(conn: Connection) -> None:
    conn.execute(insert(OrgRow).values(id="org_a", name="org-a", plan="pro", created_at=_NOW))


def _run(conn: Connection, run_id: str, attempts: int, *, billed: bool = True) -> list[int]:
    """A succeeded run of one shard with ``attempts`` ended attempts, each billed (a usage
    row of its attempt's id) unless ``billed`` is False (not settled yet); their ids."""
    conn.execute(
        insert(RunRow).values(
            id=run_id, org_id="org_a", state="succeeded", spec={"command": ["true"]},
            parallelism=1, machine="nano", gang=False, created_at=_NOW,
        )
    )  # fmt: skip
    shard = conn.scalar(
        insert(ShardRow)
        .values(run_id=run_id, index=0, state="succeeded", attempts=attempts, failures=0)
        .returning(ShardRow.id)
    )
    ids = []
    for number in range(1, attempts + 1):
        attempt = conn.execute(
            insert(AttemptRow).values(
                shard_id=shard, run_id=run_id, number=number, state="succeeded",
                handle=f"att:{run_id}/0.{number}", started_at=_NOW, ended_at=_NOW,
            ).returning(AttemptRow.id)
        ).scalar_one()  # fmt: skip
        ids.append(attempt)
    if not billed:
        return ids
    conn.execute(
        insert(UsageRow),
        [
            {"attempt_id": attempt, "org_id": "org_a", "run_id": run_id, "machine": "nano",
             "started_at": _NOW, "ended_at": _NOW, "wall_seconds": 1.0, "units": 0.25,
             "compute_seconds": 0.25}
            for attempt in ids
        ],
    )  # fmt: skip
    return ids


def _attempts(engine: Engine) -> dict[str, list[tuple[int, str | None]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(AttemptRow.run_id, AttemptRow.id, AttemptRow.handle).order_by(AttemptRow.id)
        )
        out: dict[str, list[tuple[int, str | None]]] = {}
        for run_id, attempt, handle in rows:
            out.setdefault(run_id, []).append((attempt, handle))
        return out


def test_upgrade_keeps_ids_above_the_usage_of_deleted_runs(tmp_path: Path) -> None:
    """A store at 0014 whose newest run was deleted (its usage kept) and whose next run
    took one of its attempt ids again (SQLite did): after the upgrade that attempt has an
    id of its own, the rows, indexes and keys are as they were, and every new id is
    above any id a usage row holds."""
    engine = make_engine(database_url_for(tmp_path))
    with engine.begin() as conn:
        command.upgrade(_cfg(conn), "0014")
        _org(conn)
        kept = _run(conn, "wrk_kept", 1)
        gone = _run(conn, "wrk_gone", 3)
        conn.execute(delete(RunRow).where(RunRow.id == "wrk_gone"))
        reused = _run(conn, "wrk_after", 2, billed=False)  # not settled yet
    if engine.dialect.name == "sqlite":  # the bug: the deleted run's ids again
        assert reused[0] == gone[0]
    migrate(engine)

    after = _attempts(engine)
    assert after["wrk_kept"] == [(kept[0], "att:wrk_kept/0.1")]
    assert [handle for _, handle in after["wrk_after"]] == [
        "att:wrk_after/0.1",
        "att:wrk_after/0.2",
    ]
    assert min(attempt for attempt, _ in after["wrk_after"]) > max(gone)
    with engine.begin() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        billed = set(conn.scalars(select(UsageRow.attempt_id)))
        assert billed == {*kept, *gone}
        newest = _run(conn, "wrk_new", 1)[0]
        assert newest > max(billed | {a for a, _ in after["wrk_after"]})
        conn.execute(delete(RunRow).where(RunRow.id == "wrk_new"))
        assert _run(conn, "wrk_newer", 1)[0] > newest  # not the deleted run's id again
        conn.execute(delete(RunRow).where(RunRow.id == "wrk_kept"))
        left = conn.scalars(select(AttemptRow.run_id).where(AttemptRow.run_id == "wrk_kept"))
        assert list(left) == []  # the foreign key still cascades
        if engine.dialect.name == "sqlite":
            ddl = conn.scalar(text("SELECT sql FROM sqlite_master WHERE name = 'attempts'"))
            assert "AUTOINCREMENT" in ddl
    engine.dispose()


def test_downgrade_and_upgrade_again_keep_the_attempts(tmp_path: Path) -> None:
    """0015 undone (SQLite: the plain key again) and done again: the same rows, and ids
    still above the ones used."""
    engine = make_engine(database_url_for(tmp_path))
    migrate(engine)
    with engine.begin() as conn:
        _org(conn)
        ids = _run(conn, "wrk_one", 2)
    with engine.begin() as conn:
        command.downgrade(_cfg(conn), "0014")
    migrate(engine)
    assert _attempts(engine) == {
        "wrk_one": [(n, f"att:wrk_one/0.{k}") for k, n in enumerate(ids, 1)]
    }
    with engine.begin() as conn:
        assert _run(conn, "wrk_two", 1)[0] > max(ids)
    engine.dispose()
