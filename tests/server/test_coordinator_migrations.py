"""The coordinator's audit log under the coordinator database's migrations (revision 0005).

Earlier releases let the AuditLog create its table itself on the coordinator's database; the
migration now owns it. A database at 0004 that already holds a signed log keeps every
entry, a new database gets the table from the migrations, and a database written by a newer
release is refused rather than half-understood.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine

from oralfed.privacy.audit_log import RUN_STARTED, AuditLog, read_database_log
from oralfed.privacy.audit_models import AuditBase
from oralfed.privacy.audit_verify import verify_entries
from oralfed.privacy.schema_migrations import SchemaError
from oralfed.server.coordinator_db import SCHEMA, CoordinatorStore
from tests.server.test_coordinator_postgres import assert_schema_matches_models


def at_revision_0004(path: Path) -> str:
    """A coordinator database as the release before 0005 left it (no audit table yet)."""
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(SCHEMA.config(connection), "0004")
    engine.dispose()
    return url


def revision(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(version)


def test_a_signed_log_made_before_the_migration_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    url = at_revision_0004(path)
    engine = create_engine(url)
    AuditBase.metadata.create_all(engine)  # what the AuditLog of earlier releases did
    key = Ed25519PrivateKey.generate()
    old_log = AuditLog(engine, key)
    for run in ("run-1", "run-2"):
        old_log.append(RUN_STARTED, {"run_id": run, "settings": {}})
    engine.dispose()

    store = CoordinatorStore(url)
    try:
        AuditLog(store.engine, key).append(RUN_STARTED, {"run_id": "run-3", "settings": {}})
    finally:
        store.close()
    assert revision(path) == SCHEMA.head == "0005"
    entries = read_database_log(path)
    assert [entry.payload_data()["run_id"] for entry in entries] == ["run-1", "run-2", "run-3"]
    assert verify_entries(entries, key.public_key()).ok
    assert_schema_matches_models(url)


def test_a_new_coordinator_database_gets_its_audit_table(tmp_path: Path) -> None:
    store = CoordinatorStore.sqlite_file(tmp_path / "coordinator.db")
    try:
        key = Ed25519PrivateKey.generate()
        entry = AuditLog(store.engine, key).append(RUN_STARTED, {"run_id": "r1"})
    finally:
        store.close()
    assert entry.seq == 1
    assert verify_entries(read_database_log(tmp_path / "coordinator.db"), key.public_key()).ok


def test_a_foreign_audit_table_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    url = at_revision_0004(path)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE audit_log (id INTEGER PRIMARY KEY, line TEXT)")
    with pytest.raises(SchemaError, match="'audit_log' exists with columns id, line"):
        CoordinatorStore(url)
    assert revision(path) == "0004"


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    CoordinatorStore.sqlite_file(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00d'")
    with pytest.raises(SchemaError, match="coordinator database is at schema revision 'f00d'"):
        CoordinatorStore.sqlite_file(path)
    assert revision(path) == "f00d"
