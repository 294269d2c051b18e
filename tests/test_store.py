"""The store: migrations match the models (on the session's store), SQLite runs in WAL mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from conftest import database_url_for
from sylphx._server.store import Base, make_engine, migrate, revision


def test_migrations_match_the_models(tmp_path: Path) -> None:
    engine = make_engine(database_url_for(tmp_path))
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_sqlite_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_admin_migrate_brings_the_store_to_head(tmp_path: Path) -> None:
    url = database_url_for(tmp_path)
    env = {**os.environ, "SYLPHX_HOME": str(tmp_path), "SYLPHX_DATABASE_URL": url}
    for _ in range(2):  # idempotent
        out = subprocess.run(
            [sys.executable, "-m", "sylphx", "admin", "migrate"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("store at revision ")
    assert revision(make_engine(url)) == out.stdout.split()[3]
