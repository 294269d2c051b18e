"""Usage by day: ``usage_days`` sums ``usage`` by UTC day, run and machine tier, so a usage
report over a long window reads one row per run and day instead of one per attempt
(#17: a year of 200 runs/day x 32 shards is 2.3M usage rows, 5 s to aggregate on SQLite).
Filled here from the existing usage; ``billing.record`` keeps it from then on."""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"

_DAY = {  # the UTC day of usage.ended_at as "YYYY-MM-DD"
    "sqlite": "substr(ended_at, 1, 10)",  # stored as UTC text "YYYY-MM-DD HH:MM:SS.ffffff"
    "postgresql": "to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


def upgrade() -> None:
    op.create_table(
        "usage_days",
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("machine", sa.String(length=16), nullable=False),
        sa.Column("wall_seconds", sa.Float(), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "day", "run_id", "machine"),
    )
    day = _DAY[op.get_bind().dialect.name]
    op.execute(
        sa.text(
            "INSERT INTO usage_days (org_id, day, run_id, machine, wall_seconds, compute_seconds)"
            f" SELECT org_id, {day}, run_id, machine, sum(wall_seconds), sum(compute_seconds)"
            f" FROM usage GROUP BY org_id, {day}, run_id, machine"
        )
    )


def downgrade() -> None:
    op.drop_table("usage_days")
