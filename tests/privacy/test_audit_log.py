"""The audit log: signed entries appended atomically with the ledger's own state, and its
signing key kept private."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oralfed.privacy.audit_log import (
    BUDGET_CHANGED,
    DATA_IMPORTED,
    DATASET_REGISTERED,
    LEDGER_CHARGE,
    LEDGER_REFUSED,
    AuditEntry,
    AuditError,
    AuditLog,
    read_database_log,
)
from oralfed.privacy.audit_verify import verify_entries
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.keys import (
    PRIVATE_KEY_FILE,
    AuditKeyError,
    key_fingerprint,
    load_or_create_signing_key,
)
from oralfed.privacy.ledger import BudgetExceeded, PrivacyLedger
from oralfed.server.coordinator_db import CoordinatorStore

DELTA = 1e-5
ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


def test_signing_key_is_private_and_stable(state_dir: Path):
    first = load_or_create_signing_key(state_dir)
    mode = stat.S_IMODE((state_dir / PRIVATE_KEY_FILE).stat().st_mode)
    assert mode == 0o600
    again = load_or_create_signing_key(state_dir)
    assert key_fingerprint(first.public_key()) == key_fingerprint(again.public_key())


def test_corrupt_key_and_database_files_are_clear_errors(tmp_path: Path):
    (tmp_path / PRIVATE_KEY_FILE).write_text("not a key")
    with pytest.raises(AuditKeyError, match=PRIVATE_KEY_FILE):
        load_or_create_signing_key(tmp_path)
    garbage = tmp_path / "ledger.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AuditError, match="not a readable audit database"):
        read_database_log(garbage)
    with pytest.raises(AuditError, match="no such database file"):
        read_database_log(tmp_path / "missing.db")


def test_ledger_events_are_logged_with_their_figures(state_dir: Path):
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=1.0, delta=DELTA)
        ledger.ensure_dataset("clinic-01", epsilon_cap=1.5, delta=DELTA, reason="board decision")
        charge = ledger.charge("clinic-01", ROUND, run_id="run-1", round=1, data_fingerprint="f")
        with pytest.raises(BudgetExceeded) as refused:
            for round_number in range(2, 10):
                ledger.charge("clinic-01", ROUND, run_id="run-1", round=round_number)
        history = ledger.history("clinic-01")
    entries = read_database_log(state_dir / "ledger.db")
    kinds = [entry.kind for entry in entries]
    assert kinds[:2] == [DATASET_REGISTERED, BUDGET_CHANGED]
    assert kinds[2:] == [LEDGER_CHARGE] * len(history) + [LEDGER_REFUSED]
    first = entries[2].payload_data()
    assert first == {
        "dataset_id": "clinic-01",
        "run_id": "run-1",
        "round": 1,
        "mechanism": "dpsgd",
        "noise_multiplier": 2.0,
        "sample_rate": 0.05,
        "steps": 100,
        "delta": DELTA,
        "accountant": "pld",
        "epsilon_cap": 1.5,
        "charge_id": charge.id,
        "epsilon_before": 0.0,
        "epsilon_after": charge.epsilon_after,
        "data_fingerprint": "f",
    }
    if len(history) > 1:
        assert entries[3].payload_data()["epsilon_before"] == history[0].epsilon_after
    denial = entries[-1].payload_data()
    assert denial["epsilon_would_be"] == refused.value.would_spend > 1.5
    assert denial["epsilon_before"] == pytest.approx(history[-1].epsilon_after)
    assert entries[1].payload_data()["reason"] == "board decision"


def test_refused_charge_logs_an_entry_but_changes_no_ledger_row(state_dir: Path):
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=0.01, delta=DELTA)
        with pytest.raises(BudgetExceeded):
            ledger.charge("clinic-01", ROUND, run_id="run-1", round=1)
    connection = sqlite3.connect(state_dir / "ledger.db")
    assert connection.execute("SELECT count(*) FROM ledger_charges").fetchone() == (0,)
    connection.close()
    assert read_database_log(state_dir / "ledger.db")[-1].kind == LEDGER_REFUSED


def test_failed_charge_leaves_no_audit_entry(state_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Atomicity: if the audit append fails, the charge is rolled back with it."""
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=10.0, delta=DELTA)
        assert ledger.audit is not None

        def broken(*_args: object, **_kwargs: object) -> AuditEntry:
            raise RuntimeError("disk full")

        monkeypatch.setattr(ledger.audit, "append", broken)
        with pytest.raises(RuntimeError):
            ledger.charge("clinic-01", ROUND, run_id="run-1", round=1)
        assert ledger.history("clinic-01") == []


def test_append_once_logs_a_repeated_event_once(five_entries: Path):
    with PrivacyLedger.in_state_dir(five_entries.parent) as ledger:
        assert ledger.audit is not None
        payload = {"file_sha256": "abc", "rows_read": 10}
        assert ledger.audit.append_once(DATA_IMPORTED, payload) is not None
        assert ledger.audit.append_once(DATA_IMPORTED, payload) is None
    assert [e.kind for e in read_database_log(five_entries)].count(DATA_IMPORTED) == 1


def test_non_finite_figures_are_recorded_as_text(tmp_path: Path):
    log = AuditLog(
        CoordinatorStore.sqlite_file(tmp_path / "c.db").engine, Ed25519PrivateKey.generate()
    )
    entry = log.append("test.event", {"epsilon": float("inf")})
    assert entry.payload_data() == {"epsilon": None}  # the project's one JSON encoding
    assert verify_entries([entry], log.public_key).ok
