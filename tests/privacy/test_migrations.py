"""The clinic ledger under its Alembic migrations (privacy/migrations, privacy/schema_migrations).

A ledger holds a clinic's lifetime budget, so its schema must be able to change without
stranding that history: new ledgers are made by the migrations, ledgers made by the
``create_all`` of earlier releases are adopted with every charge and signed entry, one
writer migrates while concurrent openers wait, and a ledger from a newer release is refused.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from oralfed.privacy.audit_models import AuditBase
from oralfed.privacy.events import GaussianEvent
from oralfed.privacy.keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, load_or_create_signing_key
from oralfed.privacy.ledger import (
    LEDGER_FILE,
    LEDGER_SCHEMA,
    LedgerError,
    PrivacyLedger,
)
from oralfed.privacy.ledger_models import Base
from oralfed.schemas.errors import ExitCode
from tests.conftest import run_cli
from tests.privacy.conftest import ROUND

MODELS = [Base.metadata, AuditBase.metadata]


def revision(path: Path) -> str | None:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert len(rows) == 1, rows
    return str(rows[0][0])


def drift(path: Path) -> list[object]:
    """What differs between the database and the models (empty: they match)."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), MODELS))
    finally:
        engine.dispose()


def legacy_copy(source: Path, target: Path, *, with_audit_log: bool = True) -> Path:
    """``target``: the state of ``source`` in a database built as releases before migrations
    built it (the models' ``create_all``, no ``alembic_version``), rows copied verbatim."""
    target.mkdir()
    for name in (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE):
        shutil.copy2(source / name, target / name)
    engine = create_engine(f"sqlite:///{target / LEDGER_FILE}")
    Base.metadata.create_all(engine)
    if with_audit_log:
        AuditBase.metadata.create_all(engine)
    engine.dispose()
    tables = [*Base.metadata.sorted_tables, *(AuditBase.metadata.sorted_tables * with_audit_log)]
    with sqlite3.connect(target / LEDGER_FILE) as connection:
        connection.execute("ATTACH DATABASE ? AS old", (str(source / LEDGER_FILE),))
        for table in tables:
            columns = ", ".join(column.name for column in table.columns)
            connection.execute(
                f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM old.{table.name}"
            )
    return target


def tables_of(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def test_a_new_ledger_is_made_by_the_migrations_and_matches_the_models(state_dir: Path) -> None:
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        assert ledger.migrated_from is None
        ledger.ensure_dataset("clinic-01", 5.0, 1e-5)
    path = state_dir / LEDGER_FILE
    assert revision(path) == LEDGER_SCHEMA.head
    assert drift(path) == []
    with PrivacyLedger.in_state_dir(state_dir) as reopened:  # nothing left to migrate
        assert reopened.migrated_from == LEDGER_SCHEMA.head


def test_a_ledger_made_before_migrations_is_adopted_with_its_history(
    capsys: pytest.CaptureFixture[str], clinic: Path, tmp_path: Path
) -> None:
    with PrivacyLedger.in_state_dir(clinic) as original:
        charges = original.history("clinic-01")
    legacy = legacy_copy(clinic, tmp_path / "legacy")
    assert "alembic_version" not in tables_of(legacy / LEDGER_FILE)

    with PrivacyLedger.in_state_dir(legacy) as ledger:
        assert ledger.migrated_from is None  # it had no revision
        assert ledger.history("clinic-01") == charges
        ledger.charge("clinic-01", ROUND, run_id="run-2", round=1)
    path = legacy / LEDGER_FILE
    assert revision(path) == LEDGER_SCHEMA.head
    assert drift(path) == []
    code, out, err = run_cli(capsys, "audit", "verify", "--state-dir", legacy)
    assert code == 0, out + err


def test_a_ledger_never_audited_gets_its_audit_log(clinic: Path, tmp_path: Path) -> None:
    """Earlier releases made the audit table on first audited use: it may be missing."""
    legacy = legacy_copy(clinic, tmp_path / "legacy", with_audit_log=False)
    assert "audit_log" not in tables_of(legacy / LEDGER_FILE)
    with PrivacyLedger.in_state_dir(legacy) as ledger:
        assert len(ledger.history("clinic-01")) == 2
        ledger.charge("clinic-01", ROUND, run_id="run-2", round=1)
        assert ledger.audit is not None
    assert drift(legacy / LEDGER_FILE) == []


def test_a_foreign_table_of_the_same_name_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE ledger_charges (id INTEGER PRIMARY KEY, amount REAL)")
    with pytest.raises(LedgerError, match=r"ledger\.db.*'ledger_charges'.*amount, id"):
        PrivacyLedger(f"sqlite:///{path}")
    assert tables_of(path) == {"ledger_charges"}  # the refused migration changed nothing


def test_a_ledger_from_a_newer_release_is_refused(clinic: Path) -> None:
    path = clinic / LEDGER_FILE
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(LedgerError, match=r"ledger\.db.*'9999'.*newer release") as refused:
        PrivacyLedger.in_state_dir(clinic)
    assert refused.value.exit_code == ExitCode.LEDGER
    assert revision(path) == "9999"


def _open_and_report(state_dir: Path, start: multiprocessing.synchronize.Barrier) -> str:
    """The revision an opener found, or what it raised (as text: any error must reach the
    test, and not every exception survives pickling)."""
    start.wait(timeout=60)
    try:
        with PrivacyLedger.in_state_dir(state_dir) as ledger:
            return repr(ledger.migrated_from)
    except Exception as error:
        return f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("kind", ["new", "legacy"])
def test_concurrent_openers_migrate_once(clinic: Path, tmp_path: Path, kind: str) -> None:
    if kind == "new":
        state_dir = tmp_path / "new"
        state_dir.mkdir()
        load_or_create_signing_key(state_dir)  # key races are not this test's subject
    else:
        state_dir = legacy_copy(clinic, tmp_path / "legacy")
    openers = 6
    context = multiprocessing.get_context("fork")
    start = context.Manager().Barrier(openers)
    with context.Pool(openers) as pool:
        reports = pool.starmap_async(_open_and_report, [(state_dir, start)] * openers).get(120)
    # Exactly one opener found the database unmigrated; the others found it done.
    assert sorted(reports) == sorted(["None", *[repr(LEDGER_SCHEMA.head)] * (openers - 1)])
    assert revision(state_dir / LEDGER_FILE) == LEDGER_SCHEMA.head
    assert drift(state_dir / LEDGER_FILE) == []


def test_a_file_that_is_not_a_database_is_named(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / LEDGER_FILE).write_text("patient_ref,age\np-1,40\n")
    with pytest.raises(
        LedgerError,
        match=r"ledger\.db: not a readable ledger database: it is not an SQLite database",
    ):
        PrivacyLedger.in_state_dir(state_dir)


def test_a_directory_in_place_of_the_ledger_is_named(state_dir: Path) -> None:
    (state_dir / LEDGER_FILE).mkdir(parents=True)
    with pytest.raises(
        LedgerError, match=r"ledger\.db: not a readable ledger database: it is a directory"
    ):
        PrivacyLedger.in_state_dir(state_dir)


@pytest.fixture
def read_only_dir() -> Iterator[Path]:
    """A folder this test's ledger process cannot write (as root: one owned by root, which
    the process opens after dropping to ``nobody``)."""
    folder = Path(tempfile.mkdtemp(prefix="oralfed-ro-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def _open_as_reader(path: Path) -> str:
    """In a forked child: drop write access to ``path``'s folder, open the ledger there."""
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    else:
        path.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
        if path.exists():
            path.chmod(stat.S_IRUSR)
    try:
        PrivacyLedger(f"sqlite:///{path}").close()
    except Exception as error:  # as text: not every exception survives pickling
        return str(error) if isinstance(error, LedgerError) else repr(error)
    return "opened"


@pytest.mark.parametrize("existing", [True, False], ids=["ledger", "no-ledger-yet"])
def test_a_read_only_state_directory_is_named(read_only_dir: Path, existing: bool) -> None:
    path = read_only_dir / LEDGER_FILE
    if existing:
        with PrivacyLedger(f"sqlite:///{path}") as ledger:
            ledger.ensure_dataset("clinic-01", 5.0, 1e-5)
            ledger.charge("clinic-01", GaussianEvent(5.0), run_id="run-1")
    with multiprocessing.get_context("fork").Pool(1) as pool:
        message = pool.apply_async(_open_as_reader, (path,)).get(60)
    assert message.startswith(f"{path}: cannot be opened for writing"), message
    assert f"{read_only_dir} must be writable" in message
    assert path.exists() == existing


def test_the_operator_can_migrate_explicitly(
    capsys: pytest.CaptureFixture[str], clinic: Path, tmp_path: Path
) -> None:
    legacy = legacy_copy(clinic, tmp_path / "legacy")
    code, out, err = run_cli(capsys, "clinic", "migrate", "--state-dir", legacy)
    assert code == 0, err
    assert f"migrated to schema revision {LEDGER_SCHEMA.head} (was made before migrations)" in out
    code, out, _ = run_cli(capsys, "clinic", "migrate", "--state-dir", legacy)
    assert code == 0 and "already at schema revision" in out
    code, out, err = run_cli(capsys, "clinic", "migrate", "--state-dir", tmp_path / "typo")
    assert code == ExitCode.LEDGER and "no ledger database file here" in err
    assert not (tmp_path / "typo").exists()
