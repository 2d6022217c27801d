"""The coordinator's signed audit log of runs and rounds, now under the migrations.

Earlier releases created the ``audit_log`` table on first use (the AuditLog's own
``create_all``), so a database at 0004 may hold it already, with every entry its runs
signed: it is kept, after checking its columns are the first revision's, and created
otherwise. The table is the one frozen definition the clinic's ledger migrations use too.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from oralfed.privacy.migrations.audit_log_v1 import audit_log_table
from oralfed.privacy.schema_migrations import create_table_unless_present

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_table_unless_present(audit_log_table(sa.MetaData()))


def downgrade() -> None:
    op.drop_table("audit_log")
