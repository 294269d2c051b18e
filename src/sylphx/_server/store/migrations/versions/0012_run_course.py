"""``runs.course``: what changed a run's course (an admission deadline), as a field.

The reconciler rewrites a run's message every pass (why it waits); the part that explains
its course was kept by reading it back out of the message. It is a column now: the
message is built from it. Runs still active keep the note their message carries."""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"

_NOTE = "AdmissionTimeout"


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("course", sa.Text(), nullable=True))
    runs = sa.table(
        "runs", sa.column("id", sa.String), sa.column("state", sa.String),
        sa.column("message", sa.Text), sa.column("course", sa.Text),
    )  # fmt: skip
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(runs.c.id, runs.c.message).where(
            runs.c.state.in_(("queued", "running")), runs.c.message.like(f"{_NOTE}%")
        )
    ).all()
    for run_id, message in rows:
        note = message.split("; ")[0]
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(course=note))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("course")
