"""The audit log: every kind of tampering is detected and located; ledger events are logged
atomically with the ledger's own state."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy import audit
from privacy.audit import (
    AuditEntry,
    AuditError,
    AuditLog,
    cross_check_ledger,
    entry_hash,
    read_database_log,
    read_export,
    verify_entries,
    write_export,
)
from privacy.events import DpSgdEvent
from privacy.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    AuditKeyError,
    key_fingerprint,
    load_or_create_signing_key,
    load_public_key,
)
from privacy.ledger import BudgetExceeded, PrivacyLedger

DELTA = 1e-5
ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "clinic"


@pytest.fixture
def five_entries(state_dir: Path) -> Path:
    """A clinic database whose audit log holds five entries; returns the database path."""
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        assert ledger.audit is not None
        for index in range(5):
            ledger.audit.append("test.event", {"index": index, "value": 0.1 * index})
    return state_dir / "ledger.db"


@pytest.fixture
def public_key_path(five_entries: Path) -> Path:
    return five_entries.parent / PUBLIC_KEY_FILE


@pytest.fixture
def db(five_entries: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(five_entries)
    yield connection
    connection.commit()
    connection.close()


def check(database: Path, public_key_path: Path, expect_head: str | None = None):
    return verify_entries(
        read_database_log(database), load_public_key(public_key_path), expect_head=expect_head
    )


def test_untouched_log_verifies_and_reports_its_head(five_entries: Path, public_key_path: Path):
    result = check(five_entries, public_key_path)
    assert result.ok, result.failures
    assert (result.entries, result.head_seq) == (5, 5)
    assert result.head_hash == read_database_log(five_entries)[-1].entry_hash
    assert check(five_entries, public_key_path, expect_head=result.head_hash).ok


def test_changed_byte_is_located(five_entries, public_key_path, db):
    db.execute("UPDATE audit_log SET payload = replace(payload, '3', '4') WHERE seq = 4")
    db.commit()
    result = check(five_entries, public_key_path)
    assert [(f.seq, f.problem) for f in result.failures] == [(4, "changed")]


def test_changed_kind_is_located(five_entries, public_key_path, db):
    db.execute("UPDATE audit_log SET kind = 'test.other' WHERE seq = 2")
    db.commit()
    assert [(f.seq, f.problem) for f in check(five_entries, public_key_path).failures] == [
        (2, "changed")
    ]


def test_rehashed_entry_without_the_key_is_a_forged_signature(five_entries, public_key_path, db):
    entry = read_database_log(five_entries)[2]
    payload = audit.canonical_json({"index": 99, "value": 0.0})
    new_hash = entry_hash(
        seq=entry.seq,
        recorded_at=entry.recorded_at,
        kind=entry.kind,
        payload=json.loads(payload),
        prev_hash=entry.prev_hash,
        signer=entry.signer,
    )
    forged = Ed25519PrivateKey.generate().sign(bytes.fromhex(new_hash)).hex()
    db.execute(
        "UPDATE audit_log SET payload = ?, entry_hash = ?, signature = ? WHERE seq = 3",
        (payload, new_hash, forged),
    )
    db.commit()
    failures = check(five_entries, public_key_path).failures
    # The forged entry, and the next one, whose link still names the old hash.
    assert [(f.seq, f.problem) for f in failures] == [(3, "forged-signature"), (4, "reordered")]


def test_deleted_entry_is_located(five_entries, public_key_path, db):
    db.execute("DELETE FROM audit_log WHERE seq = 3")
    db.commit()
    failures = check(five_entries, public_key_path).failures
    assert [(f.seq, f.problem) for f in failures] == [(4, "deleted")]
    assert "(3)" in failures[0].detail


def test_deleted_first_entry_is_located(five_entries, public_key_path, db):
    db.execute("DELETE FROM audit_log WHERE seq = 1")
    db.commit()
    assert [(f.seq, f.problem) for f in check(five_entries, public_key_path).failures] == [
        (2, "deleted")
    ]


def test_reordered_entries_are_located(five_entries, public_key_path, db):
    columns = "seq, recorded_at, kind, payload, prev_hash, entry_hash, signer, signature"
    second = db.execute(f"SELECT {columns} FROM audit_log WHERE seq = 2").fetchone()
    third = db.execute(f"SELECT {columns} FROM audit_log WHERE seq = 3").fetchone()
    db.execute("UPDATE audit_log SET seq = -2 WHERE seq = 2")  # unique seq: swap via a spare
    assignments = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
    db.execute(f"UPDATE audit_log SET {assignments} WHERE seq = 3", second)
    db.execute(f"UPDATE audit_log SET {assignments} WHERE seq = -2", third)
    db.commit()
    failures = check(five_entries, public_key_path).failures
    assert (failures[0].position, failures[0].seq, failures[0].problem) == (2, 3, "reordered")
    assert {f.problem for f in failures} == {"reordered"}


def test_truncated_tail_is_caught_only_by_the_anchored_head(five_entries, public_key_path, db):
    head = check(five_entries, public_key_path).head_hash
    db.execute("DELETE FROM audit_log WHERE seq >= 4")
    db.commit()
    assert check(five_entries, public_key_path).ok  # the chain alone cannot tell
    failures = check(five_entries, public_key_path, expect_head=head).failures
    assert [f.problem for f in failures] == ["truncated"]
    assert head in failures[0].detail


def test_log_grown_after_the_anchor_still_verifies(five_entries, public_key_path):
    head = check(five_entries, public_key_path).head_hash
    with PrivacyLedger.in_state_dir(five_entries.parent) as ledger:
        assert ledger.audit is not None
        ledger.audit.append("test.event", {"index": 5})
    assert check(five_entries, public_key_path, expect_head=head).ok


def test_another_clinics_key_fails_every_entry(five_entries, tmp_path):
    other = load_or_create_signing_key(tmp_path / "other")
    result = verify_entries(read_database_log(five_entries), other.public_key())
    assert not result.ok
    assert {f.problem for f in result.failures} == {"foreign-key"}
    assert len(result.failures) == 5


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
    assert kinds[:2] == [audit.DATASET_REGISTERED, audit.BUDGET_CHANGED]
    assert kinds[2:] == [audit.LEDGER_CHARGE] * len(history) + [audit.LEDGER_REFUSED]
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
    assert read_database_log(state_dir / "ledger.db")[-1].kind == audit.LEDGER_REFUSED


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
        assert ledger.audit.append_once(audit.DATA_IMPORTED, payload) is not None
        assert ledger.audit.append_once(audit.DATA_IMPORTED, payload) is None
    assert [e.kind for e in read_database_log(five_entries)].count(audit.DATA_IMPORTED) == 1


def test_non_finite_figures_are_recorded_as_text(tmp_path: Path):
    from sqlalchemy import create_engine

    log = AuditLog(create_engine(f"sqlite:///{tmp_path / 'c.db'}"), Ed25519PrivateKey.generate())
    entry = log.append("test.event", {"epsilon": float("inf")})
    assert entry.payload_data() == {"epsilon": "inf"}
    assert verify_entries([entry], log.public_key).ok


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_export_carries_the_public_key(five_entries: Path, tmp_path: Path, fmt: str):
    entries = read_database_log(five_entries)
    key = load_public_key(five_entries.parent / PUBLIC_KEY_FILE)
    written = write_export(tmp_path / f"log.{fmt}", entries, key, fmt=fmt, source="test")
    if fmt == "csv":
        assert load_public_key(written[1]).public_bytes_raw() == key.public_bytes_raw()
        return
    exported, embedded = read_export(written[0])
    assert exported == entries
    assert verify_entries(exported, embedded).ok


def test_edited_export_is_caught(five_entries: Path, tmp_path: Path):
    key = load_public_key(five_entries.parent / PUBLIC_KEY_FILE)
    path = write_export(
        tmp_path / "log.json", read_database_log(five_entries), key, fmt="json", source="t"
    )[0]
    document = json.loads(path.read_text())
    document["entries"][1]["payload"]["value"] = 42
    path.write_text(json.dumps(document))
    exported, embedded = read_export(path)
    assert [(f.seq, f.problem) for f in verify_entries(exported, embedded).failures] == [
        (2, "changed")
    ]


def test_malformed_export_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "log.json"
    path.write_text("{not json")
    with pytest.raises(AuditError, match="not a JSON audit export"):
        read_export(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(AuditError, match="not an audit export"):
        read_export(path)


def _cross_check(state_dir: Path) -> list[str]:
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        budgets = ledger.datasets()
        charges = [c for b in budgets for c in ledger.history(b.dataset_id)]
    entries = read_database_log(state_dir / "ledger.db")
    return [f.detail for f in cross_check_ledger(entries, charges, budgets)]


@pytest.fixture
def charged(state_dir: Path) -> sqlite3.Connection:
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=10.0, delta=DELTA)
        for round_number in (1, 2):
            ledger.charge("clinic-01", ROUND, run_id="run-1", round=round_number)
    assert _cross_check(state_dir) == []
    return sqlite3.connect(state_dir / "ledger.db")


def test_charge_deleted_from_the_ledger_to_free_budget_is_caught(state_dir, charged) -> None:
    charged.execute("DELETE FROM ledger_charges WHERE id = 2")
    charged.commit()
    assert _cross_check(state_dir) == [
        "ledger charge 2 was audited but is missing from the ledger (deleted: its budget was freed)"
    ]


def test_ledger_rows_edited_or_added_around_the_api_are_caught(state_dir, charged) -> None:
    charged.execute("UPDATE ledger_charges SET noise_multiplier = 8.0 WHERE id = 1")
    charged.execute("UPDATE ledger_datasets SET epsilon_cap = 50.0")
    charged.execute(
        "INSERT INTO ledger_charges (dataset_id, recorded_at, run_id, round, mechanism, "
        "noise_multiplier, sample_rate, steps, delta, epsilon_after) VALUES "
        "('clinic-01', '2026-01-01 00:00:00', 'x', 3, 'dpsgd', 2.0, 0.05, 100, 1e-5, 1.0)"
    )
    charged.commit()
    problems = _cross_check(state_dir)
    assert problems[0] == "ledger charge 1 differs from its audit entry in noise_multiplier"
    assert problems[1].startswith("ledger charge 3 has no audit entry")
    assert "cap 50 in the ledger but 10.0 in the audit log" in problems[2]
