"""job_attempts.worker

The identity (`node#instance`) of the worker that reported an attempt's first event; the master
ignores events about the attempt from any other worker. Attempts from before stay null and take
the next worker that reports.

Workers now run only messages the master signed, so a queued attempt's message published before
this upgrade would be refused and dropped: such attempts are marked unpublished, and the master's
sweep sends them again, signed, seconds after it starts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_attempts") as batch_op:
        batch_op.add_column(sa.Column("worker", sa.String(length=255), nullable=True))
    op.execute(sa.text("UPDATE job_attempts SET enqueued_at = NULL WHERE status = 'queued'"))


def downgrade() -> None:
    with op.batch_alter_table("job_attempts") as batch_op:
        batch_op.drop_column("worker")
