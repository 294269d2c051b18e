"""Spend (issue #21): an org's monthly limit, and preempted windows recorded but not billed.

* ``orgs.monthly_limit_seconds``: once the org's billable compute-seconds this month reach
  it, new runs are refused (HTTP 402); None: no limit.
* ``usage.billed``: False for the window of an attempt the platform preempted (or whose
  node it lost), unless the operator bills those (``SYLPHX_BILL_PREEMPTIONS``); its
  compute-seconds are kept for the record, never billed.
* ``usage_days.unbilled_seconds``: the day's sum of those windows (``compute_seconds``
  there sums the billed ones only)."""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("monthly_limit_seconds", sa.Float(), nullable=True))
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("billed", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    with op.batch_alter_table("usage_days", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unbilled_seconds", sa.Float(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_days", schema=None) as batch_op:
        batch_op.drop_column("unbilled_seconds")
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_column("billed")
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        batch_op.drop_column("monthly_limit_seconds")
