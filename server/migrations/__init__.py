"""Alembic migrations of the coordinator database (server/coordinator_db.py)."""
