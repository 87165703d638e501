"""Adapter registry (`adapters`) and job kinds (`jobs.kind`: realign | eval).

Revision ID: 0002_adapters_eval_jobs
Revises: 0001_initial
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002_adapters_eval_jobs"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")
ID = sa.String(64)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="realign"))
    op.create_table(
        "adapters",
        sa.Column("id", ID, primary_key=True),
        sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("job_id", ID, sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("provenance", JSON_TYPE, nullable=False),
        sa.Column("eval_report", JSON_TYPE, nullable=True),
        sa.Column("deploy_gate", JSON_TYPE, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("tenant_id", "name", name="uq_adapters_tenant_name"),
        sa.UniqueConstraint("job_id", name="uq_adapters_job_id"),
    )
    op.create_index("ix_adapters_tenant_id_id", "adapters", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_adapters_tenant_id_id", table_name="adapters")
    op.drop_table("adapters")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("kind")
