"""Attempt ids are never handed out twice: ``attempts`` is AUTOINCREMENT on SQLite.

A usage row keeps its attempt's id (``usage.attempt_id``, unique) after the run is deleted
(0009). SQLite gave a plain INTEGER PRIMARY KEY the highest id in the table plus one, so
once the newest run was deleted the next attempts took its ids again, and settling them
failed on the unique key (the run ended ``failed``). The table is rebuilt with
AUTOINCREMENT (indexes, constraints, its foreign key and rows kept); its sequence starts
above every id a usage row holds. An attempt that already took the id of another run's
usage row (one still running would fail its run as it settles) gets a new id: nothing
refers to it by id (handles and log paths are by run, index and attempt number).

The other tables need nothing: shard ids are referenced only by their own attempts,
deleted with them; usage rows are never deleted and their ids are referenced by nothing;
secrets are found by name; runs, orgs, keys and volumes have random string ids.
PostgreSQL's sequences never hand an id out twice: nothing to do there."""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"

_ATTEMPTS = sa.table("attempts", sa.column("id", sa.Integer), sa.column("run_id", sa.String))
_USAGE = sa.table("usage", sa.column("attempt_id", sa.Integer), sa.column("run_id", sa.String))
_SEQUENCE = sa.table("sqlite_sequence", sa.column("name", sa.Text), sa.column("seq", sa.Integer))


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "attempts", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass
    used = (
        conn.scalar(sa.select(sa.func.max(column)))
        for column in (_USAGE.c.attempt_id, _ATTEMPTS.c.id)
    )
    top = max((n for n in used if n is not None), default=0)
    taken = conn.execute(
        sa.select(_ATTEMPTS.c.id)
        .join(_USAGE, _USAGE.c.attempt_id == _ATTEMPTS.c.id)
        .where(_USAGE.c.run_id != _ATTEMPTS.c.run_id)
        .order_by(_ATTEMPTS.c.id)
    ).scalars()
    for old in list(taken):
        top += 1
        conn.execute(sa.update(_ATTEMPTS).where(_ATTEMPTS.c.id == old).values(id=top))
    conn.execute(sa.delete(_SEQUENCE).where(_SEQUENCE.c.name == "attempts"))
    conn.execute(sa.insert(_SEQUENCE).values(name="attempts", seq=top))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("attempts", recreate="always"):
        pass  # rebuilt without AUTOINCREMENT (its sequence goes with the old table)
