"""Operations: worker heartbeats (readiness per queue), attempts and the last error per (job, stage), and when a
job's next message was confirmed enqueued (a lost enqueue is noticed in seconds).

Revision ID: 0003_operations
Revises: 0002_adapters_eval_jobs
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003_operations"
down_revision = "0002_adapters_eval_jobs"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", JSON_TYPE, nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_worker_heartbeats_last_seen", "worker_heartbeats", ["last_seen"])
    with op.batch_alter_table("stage_progress") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", JSON_TYPE, nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(), nullable=True))
    op.create_index("ix_jobs_tenant_created_at", "jobs", ["tenant_id", "created_at"])
    op.create_index("ix_files_tenant_created_at", "files", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_files_tenant_created_at", table_name="files")
    op.drop_index("ix_jobs_tenant_created_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("enqueued_at")
    with op.batch_alter_table("stage_progress") as batch:
        batch.drop_column("last_error")
        batch.drop_column("attempts")
    op.drop_index("ix_worker_heartbeats_last_seen", table_name="worker_heartbeats")
    op.drop_table("worker_heartbeats")
