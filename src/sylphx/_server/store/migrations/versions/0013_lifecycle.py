"""The fan-out lifecycle (issue #20): retrying an ended run in place, and failure policies.

* ``runs.reopened``, ``reopened_at``, ``reopen_key``: a retry of the failed indices
  (``POST /v1/runs/{id}/retry``) reopens the run. How many times, when last (its
  admission deadline and place in the queue count from then) and the last retry's
  Idempotency-Key (a retry sent twice reopens the run once).
* ``runs.fail_reason``: the run is being stopped because it failed (a ``FailRun`` rule of
  its ``failurePolicy``, or more than ``maxFailedIndexes`` indices failed); it ends
  ``failed`` with this message.
* ``shards.not_before``: a retried index waits until then (``retryBackoff``);
  ``shards.ignored``: its failures an ``Ignore`` rule retried without using the budget."""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reopened", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("reopened_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reopen_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("fail_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("ignored", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.drop_column("ignored")
        batch_op.drop_column("not_before")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("fail_reason")
        batch_op.drop_column("reopen_key")
        batch_op.drop_column("reopened_at")
        batch_op.drop_column("reopened")
