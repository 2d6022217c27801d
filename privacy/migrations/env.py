"""Alembic environment: migrate the connection the clinic's ledger hands over.

The ledger runs its migrations itself when it opens a database (``privacy/ledger.py``), or
an operator does with ``oralfed clinic migrate --state-dir DIR``; either way the connection
arrives in ``config.attributes``, inside a transaction that holds the write lock.
"""

from __future__ import annotations

from alembic import context

from oralfed.privacy.audit_models import AuditBase
from oralfed.privacy.ledger_models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("migrate a clinic's ledger with: oralfed clinic migrate --state-dir DIR")
context.configure(
    connection=connection,
    target_metadata=[Base.metadata, AuditBase.metadata],
    render_as_batch=True,  # SQLite can only alter tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
