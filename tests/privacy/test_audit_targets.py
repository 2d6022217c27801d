"""What an auditor checks: a state dir or an export, with the right key, and the ledger beside
a clinic's log, opened read-only; refusals carry their exit code and name settings, never
CLI flags."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from oralfed.privacy.audit_log import AuditError, AuditLog
from oralfed.privacy.audit_targets import (
    EMBEDDED_KEY,
    export_log,
    log_database,
    open_target,
    verify_target,
)
from oralfed.privacy.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    AuditKeyError,
    load_or_create_signing_key,
)
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.settings import SettingsError
from oralfed.server.coordinator_db import CoordinatorStore
from tests.privacy.conftest import ROUND


def test_a_clinic_state_dir_opens_its_ledger_log_with_the_key_beside_it(clinic: Path) -> None:
    target = open_target(state_dir=clinic)
    assert target.source == clinic / "ledger.db"
    assert target.key_source == str(clinic / PUBLIC_KEY_FILE)
    assert [entry.seq for entry in target.entries] == [1, 2, 3]
    assert target.ledger_rows is not None
    assert [row["id"] for row in target.ledger_rows.charges] == [1, 2]
    assert target.ledger_rows.unreadable == {}


def test_the_coordinators_log_has_no_ledger_to_cross_check(tmp_path: Path) -> None:
    AuditLog(
        CoordinatorStore.sqlite_file(tmp_path / "coordinator.db").engine,
        load_or_create_signing_key(tmp_path),
    ).append("run.started", {"run_id": "run-1"})
    target = open_target(state_dir=tmp_path)
    assert (target.source.name, target.ledger_rows) == ("coordinator.db", None)
    report = verify_target(state_dir=tmp_path)
    assert report.ok and not report.ledger_checked


@pytest.mark.parametrize("given", [{}, {"state_dir": Path("a"), "export_file": Path("b")}])
def test_exactly_one_log_is_named(given: dict[str, Path]) -> None:
    with pytest.raises(SettingsError) as refused:
        open_target(**given)
    assert refused.value.keys == ("state dir", "export file")
    assert str(refused.value) == "give exactly one of state dir and export file"
    assert refused.value.exit_code is ExitCode.USAGE


def test_a_state_dir_without_a_log_is_an_audit_error(tmp_path: Path) -> None:
    for state_dir, problem in ((tmp_path / "nope", "no such directory"), (tmp_path, "neither")):
        with pytest.raises(AuditError, match=problem) as refused:
            log_database(state_dir)
        assert refused.value.exit_code is ExitCode.AUDIT
        assert str(refused.value).startswith("state dir ") and "--" not in str(refused.value)


def test_verify_anchors_the_head_and_catches_a_cut_tail(clinic: Path) -> None:
    report = verify_target(state_dir=clinic)
    assert report.ok and (report.result.entries, report.result.head_seq) == (3, 3)
    assert report.to_dict()["source"] == str(clinic / "ledger.db")
    assert verify_target(state_dir=clinic, expect_head=report.result.head_hash).ok
    cut = verify_target(state_dir=clinic, expect_head="ab" * 32)
    assert [failure.problem for failure in cut.result.failures] == ["truncated"]


def test_a_charge_deleted_behind_an_intact_chain_fails_verification(clinic: Path) -> None:
    with sqlite3.connect(clinic / "ledger.db") as connection:
        connection.execute("DELETE FROM ledger_charges WHERE id = 2")
    connection.close()
    report = verify_target(state_dir=clinic)
    assert not report.ok and report.ledger_checked
    deleted, epsilon = report.result.failures
    assert (deleted.problem, deleted.seq, deleted.ledger_row) == (
        "ledger-mismatch",
        3,
        "ledger_charges[id=2]",
    )
    assert deleted.detail.startswith("ledger charge 2 was audited but is missing")
    assert (epsilon.seq, epsilon.ledger_row) == (1, "ledger_datasets[dataset_id='clinic-01']")
    assert "the ledger would let through releases that its signed budget refuses" in (
        epsilon.detail
    )


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of ``folder`` with its bytes and modification time."""
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in folder.iterdir()}


def test_verify_opens_the_database_read_only_and_writes_nothing(clinic: Path) -> None:
    """No table, key, journal or byte appears: not on an intact ledger, not on a tampered
    one, not with the private key gone (verification never needs or makes it)."""
    (clinic / PRIVATE_KEY_FILE).unlink()
    before = _snapshot(clinic)
    assert verify_target(state_dir=clinic).ok
    assert _snapshot(clinic) == before
    with sqlite3.connect(clinic / "ledger.db") as connection:
        connection.execute("UPDATE ledger_datasets SET delta = 0.5")
    connection.close()
    before = _snapshot(clinic)
    assert not verify_target(state_dir=clinic).ok
    assert _snapshot(clinic) == before
    assert sorted(before) == ["audit_signing_key.pub.pem", "ledger.db"]


def test_a_running_node_is_read_in_one_snapshot_without_new_files(clinic: Path) -> None:
    """With the node's connection open (its WAL beside the database), the log and the rows
    are read through that journal and still nothing is created."""
    with PrivacyLedger.in_state_dir(clinic) as ledger:
        ledger.charge("clinic-01", ROUND, run_id="run-1", round=3)
        names = sorted(path.name for path in clinic.iterdir())
        assert "ledger.db-wal" in names
        report = verify_target(state_dir=clinic)
        assert report.ok and report.result.entries == 4
        assert sorted(path.name for path in clinic.iterdir()) == names


def test_a_ledger_table_that_cannot_be_read_fails_verification(clinic: Path) -> None:
    with sqlite3.connect(clinic / "ledger.db") as connection:
        connection.execute("DROP TABLE ledger_budget_changes")
    connection.close()
    (failure,) = verify_target(state_dir=clinic).result.failures
    assert failure.detail.startswith("the ledger's table ledger_budget_changes cannot be read")


def test_an_export_verifies_with_the_nodes_key_or_its_own(clinic: Path, tmp_path: Path) -> None:
    exported = export_log(clinic, tmp_path / "log.json")
    assert exported.files == (tmp_path / "log.json",) and exported.result.ok
    with_node_key = verify_target(
        export_file=tmp_path / "log.json", public_key=clinic / PUBLIC_KEY_FILE
    )
    assert with_node_key.ok and with_node_key.key_source == str(clinic / PUBLIC_KEY_FILE)
    embedded = verify_target(export_file=tmp_path / "log.json")
    assert embedded.ok and embedded.key_source == EMBEDDED_KEY
    other = tmp_path / "other"
    load_or_create_signing_key(other)
    foreign = verify_target(export_file=tmp_path / "log.json", public_key=other / PUBLIC_KEY_FILE)
    assert {failure.problem for failure in foreign.result.failures} == {"foreign-key"}


def test_csv_export_writes_the_key_beside_it(clinic: Path, tmp_path: Path) -> None:
    exported = export_log(clinic, tmp_path / "log.csv", fmt="csv")
    assert exported.files == (tmp_path / "log.csv", tmp_path / "log.csv.pub.pem")


def test_unwritable_export_and_bad_key_are_audit_errors(clinic: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(AuditError, match="cannot write the export") as refused:
        export_log(clinic, tmp_path / "file" / "log.json")
    assert refused.value.exit_code is ExitCode.AUDIT
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(AuditKeyError, match="not a PEM public key"):
        verify_target(state_dir=clinic, public_key=tmp_path / "key.pem")


def test_a_state_dir_whose_name_means_something_in_a_uri_is_read(tmp_path: Path) -> None:
    """The read-only URI quotes the path: '?', '#' and '%' are part of the name."""
    state_dir = tmp_path / "clinic #1 ?mode=rw%20"
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=5.0, delta=1e-5)
    before = _snapshot(state_dir)
    report = verify_target(state_dir=state_dir)
    assert report.ok and report.ledger_checked and report.result.entries == 1
    assert _snapshot(state_dir) == before
