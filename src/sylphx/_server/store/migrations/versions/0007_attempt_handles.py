"""Attempts are looked up by executor handle when they end: index ``attempts.handle``."""

from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_index("ix_attempts_handle", "attempts", ["handle"])


def downgrade() -> None:
    op.drop_index("ix_attempts_handle", table_name="attempts")
