"""The dashboard's signed-out sessions: a session's nonce, kept until its cookie would
have expired, so that signing out ends a copy of the cookie too, in every API process of
the home (they share the store, not memory)."""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"


def upgrade() -> None:
    op.create_table(
        "ui_sign_outs",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_index("ix_ui_sign_outs_expires_at", "ui_sign_outs", ["expires_at"])


def downgrade() -> None:
    op.drop_table("ui_sign_outs")
