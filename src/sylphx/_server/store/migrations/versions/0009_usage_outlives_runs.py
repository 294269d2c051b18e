"""Usage outlives its run: ``usage.attempt_id`` no longer references ``attempts``.

Deleting an ended run (``DELETE /v1/runs/{id}``) removes its shards and attempts; the
foreign key's ON DELETE CASCADE would have taken the run's usage rows with them, and
billing history must stay. The column keeps its unique constraint (one row per attempt).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"

# The key was created unnamed: this convention names it for SQLite's batch mode (which
# rebuilds the table); PostgreSQL reports the name it gave.
_CONVENTION = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    keys = [
        fk
        for fk in sa.inspect(bind).get_foreign_keys("usage")
        if fk["referred_table"] == "attempts"
    ]
    if not keys:
        return
    name = keys[0].get("name") or "fk_usage_attempt_id_attempts"
    with op.batch_alter_table("usage", naming_convention=_CONVENTION) as batch_op:
        batch_op.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    op.execute(  # usage of deleted runs has no attempt left to reference
        sa.text("DELETE FROM usage WHERE attempt_id NOT IN (SELECT id FROM attempts)")
    )
    with op.batch_alter_table("usage", naming_convention=_CONVENTION) as batch_op:
        batch_op.create_foreign_key(
            "fk_usage_attempt_id_attempts",
            "attempts",
            ["attempt_id"],
            ["id"],
            ondelete="CASCADE",
        )
