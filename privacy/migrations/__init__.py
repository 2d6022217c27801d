"""Alembic migrations of a clinic's ledger database (its ledger and audit log tables)."""
