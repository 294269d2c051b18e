"""Log caps: ``attempts.log_truncated`` names the streams whose output went past
SYLPHX_MAX_LOG_BYTES ("stdout", "stderr" or "stdout,stderr"; NULL when none did).
``attempts.legacy_log``: true for the attempts that existed before secrets were masked as
logs are written; their logs are still masked when served (with the current values)."""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_truncated", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("legacy_log", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(sa.text("UPDATE attempts SET legacy_log = :yes").bindparams(yes=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("legacy_log")
        batch_op.drop_column("log_truncated")
