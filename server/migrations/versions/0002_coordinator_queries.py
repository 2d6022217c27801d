"""Aggregate-insight queries and their answers (server/insights.py).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordinator_queries",
        sa.Column("query_id", sa.String(64), primary_key=True),
        sa.Column("asked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requester", sa.String(128), nullable=True),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
    )
    op.create_index("ix_coordinator_queries_requester", "coordinator_queries", ["requester"])


def downgrade() -> None:
    op.drop_table("coordinator_queries")
