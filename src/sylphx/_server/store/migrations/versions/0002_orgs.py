"""Orgs, API keys and usage; every run and volume belongs to an org.

Runs and volumes stored before this migration are kept: they move to an org
named ``local`` (enterprise plan), the one the embedded default uses.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

LOCAL_ORG = "org_local"


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("plan", sa.String(length=20), nullable=False),
        sa.Column("concurrent_shards", sa.Integer(), nullable=True),
        sa.Column("monthly_credit_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hash"),
    )
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("machine", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wall_seconds", sa.Float(), nullable=False),
        sa.Column("units", sa.Float(), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["attempt_id"], ["attempts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("attempt_id"),
    )
    op.create_index("ix_usage_org_ended", "usage", ["org_id", "ended_at"])
    op.create_index("ix_usage_run_id", "usage", ["run_id"])

    conn = op.get_bind()
    existing = (
        conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one()
        + conn.execute(sa.text("SELECT count(*) FROM volumes")).scalar_one()
    )
    if existing:
        conn.execute(
            sa.text(
                "INSERT INTO orgs (id, name, plan, created_at)"
                " VALUES (:id, 'local', 'enterprise', :t)"
            ),
            {"id": LOCAL_ORG, "t": datetime.now(UTC)},
        )
    for table in ("runs", "volumes"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("org_id", sa.String(length=40), nullable=True))
        conn.execute(sa.text(f"UPDATE {table} SET org_id = :org"), {"org": LOCAL_ORG})
        with op.batch_alter_table(table) as batch:
            batch.alter_column("org_id", existing_type=sa.String(length=40), nullable=False)
            batch.create_index(f"ix_{table}_org_id", ["org_id"])
            batch.create_foreign_key(f"fk_{table}_org_id", "orgs", ["org_id"], ["id"])


def downgrade() -> None:
    for table in ("volumes", "runs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_org_id", type_="foreignkey")
            batch.drop_index(f"ix_{table}_org_id")
            batch.drop_column("org_id")
    op.drop_table("usage")
    op.drop_table("api_keys")
    op.drop_table("orgs")
