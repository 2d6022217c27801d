"""Data sets, charges, cap changes and the signed audit log: the clinic ledger's first schema.

Ledgers made before migrations existed (by ``create_all``) already hold some or all of these
tables: the ledger's three, and the audit log once a signing key had been used. Each table
that is present is kept, after checking its columns are these, and only missing ones are
created, so such a ledger is adopted at this revision with every charge and entry it holds.

Everything is written out here rather than imported from the models, so that later code
cannot change what this revision did.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from oralfed.privacy.migrations.audit_log_v1 import audit_log_table
from oralfed.privacy.schema_migrations import create_table_unless_present

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _dataset_id() -> sa.Column[str]:
    """The column that files a charge or a cap change under its data set."""
    return sa.Column(
        "dataset_id",
        sa.String(200),
        sa.ForeignKey("ledger_datasets.dataset_id"),
        nullable=False,
        index=True,
    )


def _tables(metadata: sa.MetaData) -> list[sa.Table]:
    datasets = sa.Table(
        "ledger_datasets",
        metadata,
        sa.Column("dataset_id", sa.String(200), primary_key=True),
        sa.Column("epsilon_cap", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("accountant", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    charges = sa.Table(
        "ledger_charges",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _dataset_id(),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("mechanism", sa.String(20), nullable=False),
        sa.Column("noise_multiplier", sa.Float(), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("epsilon_after", sa.Float(), nullable=False),
        sa.Column("data_fingerprint", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    budget_changes = sa.Table(
        "ledger_budget_changes",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _dataset_id(),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.Column("old_cap", sa.Float(), nullable=True),
        sa.Column("new_cap", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    return [datasets, charges, budget_changes, audit_log_table(metadata)]


def upgrade() -> None:
    for table in _tables(sa.MetaData()):
        create_table_unless_present(table)


def downgrade() -> None:
    for table in reversed(_tables(sa.MetaData())):
        op.drop_table(table.name)
