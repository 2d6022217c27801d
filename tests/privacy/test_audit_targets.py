"""What an auditor checks: a state dir or an export, with the right key, and the ledger beside
a clinic's log; refusals carry their exit code and name settings, never CLI flags."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from oralfed.privacy.audit_log import AuditError, AuditLog
from oralfed.privacy.audit_targets import (
    EMBEDDED_KEY,
    export_log,
    log_database,
    open_target,
    verify_target,
)
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.keys import PUBLIC_KEY_FILE, AuditKeyError, load_or_create_signing_key
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.settings import SettingsError

ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


@pytest.fixture
def clinic(state_dir: Path) -> Path:
    """A clinic state dir: one data set registered and charged twice (three entries)."""
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=5.0, delta=1e-5)
        for round_number in (1, 2):
            ledger.charge("clinic-01", ROUND, run_id="run-1", round=round_number)
    return state_dir


def test_a_clinic_state_dir_opens_its_ledger_log_with_the_key_beside_it(clinic: Path) -> None:
    target = open_target(state_dir=clinic)
    assert target.source == clinic / "ledger.db" == target.ledger
    assert target.key_source == str(clinic / PUBLIC_KEY_FILE)
    assert [entry.seq for entry in target.entries] == [1, 2, 3]


def test_the_coordinators_log_has_no_ledger_to_cross_check(tmp_path: Path) -> None:
    AuditLog(
        create_engine(f"sqlite:///{tmp_path / 'coordinator.db'}"),
        load_or_create_signing_key(tmp_path),
    ).append("run.started", {"run_id": "run-1"})
    target = open_target(state_dir=tmp_path)
    assert (target.source.name, target.ledger) == ("coordinator.db", None)
    assert verify_target(state_dir=tmp_path).ok


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
    assert not report.ok
    assert [(f.problem, f.detail[:17]) for f in report.result.failures] == [
        ("ledger-mismatch", "ledger charge 2 w")
    ]


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
