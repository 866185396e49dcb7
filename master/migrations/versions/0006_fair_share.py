"""fair share: job devices and preemption, attempt admission, user limits and usage

Jobs get their spec's `devices` in a column (admission sums them at every decision) and whether they
may be preempted (the spec's `preemptible`, which defaults to true below priority 5); attempts get
`admitted_at`, the moment admission let them start. Two tables: admins' per-user caps, and each
user's decayed usage.

Jobs from before keep working: a queued attempt whose message was already published (the sweep
published it after 0005) counts as admitted, as does every running one, so nothing is sent twice and
their devices count as in use; a queued attempt never published waits for admission like a new one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: What a spec without `preemptible` gets (shared.schemas.JobSpec): preemptible below this priority.
PREEMPTIBLE_BELOW = 5
BATCH = 1000


def upgrade() -> None:
    op.create_table(
        "user_limits",
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("queue", sa.String(length=32), nullable=False),
        sa.Column("max_devices", sa.Integer(), nullable=True),
        sa.Column("max_queued", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("user", "queue"),
    )
    op.create_table(
        "user_usage",
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("queue", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user", "queue"),
    )
    with op.batch_alter_table("job_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_job_attempts_status_admitted_at", ["status", "admitted_at"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("devices", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("preemptible", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("preempting", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_preempted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_jobs_owner_status_queue", ["owner", "status", "queue"], unique=False)

    _copy_spec_fields()
    op.execute(
        sa.text(
            "UPDATE job_attempts SET admitted_at = COALESCE(enqueued_at, started_at, created_at) "
            "WHERE status = 'running' OR (status = 'queued' AND enqueued_at IS NOT NULL)"
        )
    )


def _copy_spec_fields() -> None:
    """`devices` and `preemptible` of every job not ended, from its spec (ended jobs are never
    admitted again; they keep the defaults)."""
    conn = op.get_bind()
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.BigInteger()),
        sa.column("spec", sa.JSON()),
        sa.column("priority", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("devices", sa.Integer()),
        sa.column("preemptible", sa.Boolean()),
    )
    rows = conn.execute(
        sa.select(jobs.c.id, jobs.c.spec, jobs.c.priority).where(jobs.c.status.in_(["queued", "running"]))
    ).all()
    values = []
    for job_id, spec, priority in rows:
        spec = json.loads(spec) if isinstance(spec, str) else (spec or {})
        devices = spec.get("devices", 1)
        values.append(
            {
                "job_id": job_id,
                "devices": devices if isinstance(devices, int) and devices >= 1 else 1,
                "preemptible": bool(spec.get("preemptible", priority < PREEMPTIBLE_BELOW)),
            }
        )
    update = (
        jobs.update()
        .where(jobs.c.id == sa.bindparam("job_id"))
        .values(devices=sa.bindparam("devices"), preemptible=sa.bindparam("preemptible"))
    )
    for start in range(0, len(values), BATCH):
        conn.execute(update, values[start : start + BATCH])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_owner_status_queue")
        batch_op.drop_column("last_preempted_at")
        batch_op.drop_column("preempting")
        batch_op.drop_column("preemptions")
        batch_op.drop_column("preemptible")
        batch_op.drop_column("devices")

    with op.batch_alter_table("job_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_job_attempts_status_admitted_at")
        batch_op.drop_column("admitted_at")

    op.drop_table("user_usage")
    op.drop_table("user_limits")
