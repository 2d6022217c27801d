"""Runs, rounds and clinic results: the coordinator's first schema.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordinator_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
    )
    op.create_table(
        "coordinator_rounds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "run_id", sa.String(64), sa.ForeignKey("coordinator_runs.run_id"), nullable=False
        ),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
    )
    op.create_index("ix_coordinator_rounds_run_id", "coordinator_rounds", ["run_id"])
    op.create_table(
        "coordinator_clinic_results",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "run_id", sa.String(64), sa.ForeignKey("coordinator_runs.run_id"), nullable=False
        ),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("clinic_id", sa.String(128), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_coordinator_clinic_results_run_id", "coordinator_clinic_results", ["run_id"]
    )
    op.create_index(
        "ix_coordinator_clinic_results_clinic_id", "coordinator_clinic_results", ["clinic_id"]
    )


def downgrade() -> None:
    op.drop_table("coordinator_clinic_results")
    op.drop_table("coordinator_rounds")
    op.drop_table("coordinator_runs")
