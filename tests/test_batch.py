"""Driver-level executemany (store.batch): rows written through it read back exactly as
rows written through the ORM, on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from conftest import database_url_for
from sylphx._server.store import (
    AttemptRow,
    OrgRow,
    RunRow,
    ShardRow,
    make_engine,
    migrate,
    session_factory,
)
from sylphx._server.store.batch import Batch
from sylphx._server.store.records import ATTEMPTS
from sylphx._server.tenancy import orgs

NOW = datetime(2026, 12, 2, 13, 0, 0, 123456, tzinfo=UTC)
KEYS = ("shard_id", "run_id", "number", "state", "handle", "stdout_path", "stderr_path")


def _store(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(database_url_for(tmp_path))
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        orgs.create_org(s, "acme", plan="free", now=NOW, org_id="org_a")
        orgs.create_org(s, "beta", plan="free", now=NOW, org_id="org_b")
        run = RunRow(
            id="wrk_a", org_id="org_a", state="running", spec={}, parallelism=3,
            machine="nano", gang=False, created_at=NOW,
        )  # fmt: skip
        run.shards = [ShardRow(index=i, state="running", attempts=1, failures=0) for i in range(3)]
        s.add(run)
    return sessions


def _attempt(shard_id: int, number: int, started_at: datetime | None) -> dict[str, object]:
    return {
        "shard_id": shard_id,
        "run_id": "wrk_a",
        "number": number,
        "state": "running",
        "handle": f"att:{shard_id}.{number}",
        "stdout_path": "/logs/out",
        "stderr_path": None,
        "started_at": started_at,
    }


def test_rows_read_back_like_orm_rows(tmp_path: Path) -> None:
    sessions = _store(tmp_path)
    later = NOW + timedelta(seconds=1, microseconds=7)
    other_zone = later.astimezone(timezone(timedelta(hours=-5)))  # the same instant
    batch = Batch(insert(ATTEMPTS), (*KEYS, "started_at"))
    with sessions.begin() as s:
        ids = [row.id for row in s.scalars(select(ShardRow).order_by(ShardRow.index))]
        rows = [_attempt(ids[0], 1, NOW), _attempt(ids[1], 1, later), _attempt(ids[2], 1, None)]
        rows.append(_attempt(ids[0], 2, other_zone))
        assert batch.execute(s.connection(), rows) == 4
        s.add(AttemptRow(**_attempt(ids[1], 2, later)))  # the same values through the ORM
    with sessions.begin() as s:
        got = s.scalars(select(AttemptRow).order_by(AttemptRow.id)).all()
        assert [a.started_at for a in got] == [NOW, later, None, later, later]
        assert all(a.started_at is None or a.started_at.tzinfo is not None for a in got)
        assert [a.version for a in got] == [1] * 5  # server defaults still apply
        assert got[2].stderr_path is None and got[0].stdout_path == "/logs/out"
        # a comparison in SQL sees both writes of `later` as the same value
        same = select(AttemptRow.id).where(AttemptRow.started_at == later)
        assert len(s.scalars(same).all()) == 3


def test_an_update_counts_the_rows_it_matched(tmp_path: Path) -> None:
    sessions = _store(tmp_path)
    orgs_table: Table = OrgRow.__table__  # type: ignore[assignment]
    batch = Batch(
        update(orgs_table)
        .where(orgs_table.c.id == bindparam("b_id"))
        .values(image_policy=bindparam("b_policy", type_=orgs_table.c.image_policy.type))
    )
    policy = {"allow": ["docker.io/library/*"]}  # a JSON column: its processor serializes
    with sessions.begin() as s:
        params = [
            {"b_id": "org_a", "b_policy": policy},
            {"b_id": "org_b", "b_policy": dict(policy)},
            {"b_id": "org_missing", "b_policy": policy},
        ]
        assert batch.execute(s.connection(), params) == 2
    with sessions.begin() as s:
        assert s.get(OrgRow, "org_a").image_policy == policy  # type: ignore[union-attr]
        assert s.get(OrgRow, "org_b").image_policy == policy  # type: ignore[union-attr]


def test_a_missing_parameter_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    sessions = _store(tmp_path)
    batch = Batch(insert(ATTEMPTS), (*KEYS, "started_at"))
    row = _attempt(1, 1, NOW)
    del row["handle"]
    with sessions.begin() as s, pytest.raises(ValueError, match="missing: handle"):
        batch.execute(s.connection(), [row])
    with sessions.begin() as s:
        assert s.scalars(select(AttemptRow)).all() == []


def test_no_rows_is_no_statement(tmp_path: Path) -> None:
    sessions = _store(tmp_path)
    with sessions.begin() as s:
        assert Batch(insert(ATTEMPTS), KEYS).execute(s.connection(), []) == 0


def test_a_naive_timestamp_is_refused_every_time(tmp_path: Path) -> None:
    sessions = _store(tmp_path)
    batch = Batch(insert(ATTEMPTS), (*KEYS, "started_at"))
    naive = NOW.replace(tzinfo=None)
    for _ in range(2):  # a refusal is not remembered as a result
        with sessions.begin() as s, pytest.raises(ValueError, match="naive datetime"):
            batch.execute(s.connection(), [_attempt(1, 1, naive)])
