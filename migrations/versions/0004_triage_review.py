"""Triage review: a reviewer's category override per triaged pair keeps the judge's original category and the
time of the review (jobs created with `review: true` park in `awaiting_review` after triage; the state is a
plain string column, so the new state needs no schema change).

Revision ID: 0004_triage_review
Revises: 0003_operations
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_triage_review"
down_revision = "0003_operations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("triage_items") as batch:
        batch.add_column(sa.Column("original_category", sa.String(16), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("triage_items") as batch:
        batch.drop_column("reviewed_at")
        batch.drop_column("original_category")
