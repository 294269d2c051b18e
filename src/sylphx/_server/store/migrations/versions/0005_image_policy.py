"""Per-org image admission policy."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(sa.Column("image_policy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("image_policy")
