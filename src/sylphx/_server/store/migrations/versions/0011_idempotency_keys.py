"""Idempotent submits: ``runs.idempotency_key``, unique per org.

``POST /v1/runs`` with an ``Idempotency-Key`` header stores the key with the run; the same
key again (a client repeating a submit whose answer it lost) returns that run instead of
starting another. Runs submitted without a key keep NULL (NULLs never collide)."""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.create_index(
            "ix_runs_org_idempotency_key", ["org_id", "idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_org_idempotency_key")
        batch_op.drop_column("idempotency_key")
