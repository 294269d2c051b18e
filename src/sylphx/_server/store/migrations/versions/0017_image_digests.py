"""A run's images pinned at admission: each image reference's digest, as the policy and
the scanner admitted it. Its shards run those images, never what a moved tag or a
rewritten layout names by launch time. Runs stored before have none: their images are
looked up by reference at launch, as before."""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"


def upgrade() -> None:
    op.add_column("runs", sa.Column("image_digests", sa.JSON(), nullable=True))


def downgrade() -> None:
    # in place (SQLite >= 3.35 drops a column itself): a batch copy of ``runs`` would drop
    # the table, and with it, by the foreign keys' cascade, every shard and attempt
    op.drop_column("runs", "image_digests")
