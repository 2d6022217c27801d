"""The audit log table as its first revision created it, for both databases that hold one.

A clinic's ledger database (revision 0001 here) and the coordinator's database
(``server/migrations/versions/0005``) each create it from this one frozen definition, so
that later changes to ``privacy/audit_models.py`` cannot alter what those revisions did: a
change of the table is a new revision in each.
"""

from __future__ import annotations

import sqlalchemy as sa


def audit_log_table(metadata: sa.MetaData) -> sa.Table:
    """``audit_log`` as of revision 1 (``privacy/audit_models.AuditEntryRow``)."""
    return sa.Table(
        "audit_log",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("seq", sa.Integer(), nullable=False, unique=True),
        sa.Column("recorded_at", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False, index=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.Column("signer", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
