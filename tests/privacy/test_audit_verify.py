"""Verification of the audit chain: every kind of tampering is detected and located."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine

from oralfed.privacy.audit_log import (
    KEY_ROTATED,
    AuditLog,
    canonical_json,
    entry_hash,
    read_database_log,
)
from oralfed.privacy.audit_verify import verify_entries
from oralfed.privacy.key_chain import rotation_payload
from oralfed.privacy.keys import key_fingerprint, load_or_create_signing_key, load_public_key
from oralfed.privacy.ledger import PrivacyLedger


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
    payload = canonical_json({"index": 99, "value": 0.0})
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


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("replace(payload, '0.1', 'NaN')", "NaN"),
        ("replace(payload, '0.1', 'Infinity')", "Infinity"),
        ("replace(payload, '0.1', '1e999')", "1e999"),
        ("'{not json'", "Expecting property name"),
        ("'[' || replace(hex(zeroblob(5000)), '0', '[')", "nested too deeply"),
    ],
)
def test_a_payload_no_writer_produces_is_located_not_raised(
    five_entries, public_key_path, db, payload: str, reason: str
):
    """``json.loads`` accepts NaN and infinities; canonical JSON never holds them, so a
    stored one is a changed entry (it used to crash verification with ValueError)."""
    db.execute(f"UPDATE audit_log SET payload = {payload} WHERE seq = 2")
    db.commit()
    (failure,) = check(five_entries, public_key_path).failures
    assert (failure.seq, failure.problem) == (2, "changed")
    assert reason in failure.detail


@pytest.mark.parametrize(
    ("assignment", "seq", "shown"),
    [
        ("seq = NULL", None, "seq NULL, not int"),
        ("seq = 'three'", None, "seq str 'three', not int"),
        ("payload = X'7b7d'", 3, "payload bytes b'{}', not str"),
        ("signature = NULL", 3, "signature NULL, not str"),
        ("recorded_at = NULL, kind = NULL", 3, "recorded_at NULL, not str, kind NULL, not str"),
    ],
)
def test_a_malformed_row_is_reported_by_its_position(
    five_entries, public_key_path, db, assignment: str, seq: int | None, shown: str
):
    for statement in (
        "CREATE TABLE copy AS SELECT * FROM audit_log",
        "DROP TABLE audit_log",
        "ALTER TABLE copy RENAME TO audit_log",
        f"UPDATE audit_log SET {assignment} WHERE seq = 3",
    ):
        db.execute(statement)
    db.commit()
    result = check(five_entries, public_key_path)
    (failure,) = result.failures
    assert (failure.position, failure.seq, failure.problem) == (3, seq, "malformed")
    assert failure.detail == (
        f"the entry stored at position 3 has {shown}: its row was edited outside the log"
    )
    assert "position 3" in str(failure)


def _rotate(database: Path, signer: Ed25519PrivateKey, payload: dict[str, object]) -> None:
    AuditLog(create_engine(f"sqlite:///{database}"), signer).append(KEY_ROTATED, payload)


def test_a_rotation_from_a_key_no_longer_in_force_breaks_the_chain(
    five_entries: Path, public_key_path: Path
) -> None:
    """After the hand-over to a new key, the old key (stolen, say) cannot hand over again."""
    old = load_or_create_signing_key(five_entries.parent)
    new, thief = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    _rotate(
        five_entries,
        old,
        rotation_payload(old.public_key(), new, signed_by_previous=True, reason="t"),
    )
    _rotate(
        five_entries,
        old,
        rotation_payload(old.public_key(), thief, signed_by_previous=True, reason="t"),
    )
    AuditLog(create_engine(f"sqlite:///{five_entries}"), thief).append("test.event", {})
    result = verify_entries(read_database_log(five_entries), new.public_key())
    assert [(f.seq, f.problem) for f in result.failures] == [(7, "key-chain"), (8, "foreign-key")]
    assert result.key_chain == (
        key_fingerprint(old.public_key()),
        key_fingerprint(new.public_key()),
    )


def test_a_rotation_without_the_new_keys_endorsement_breaks_the_chain(
    five_entries: Path, public_key_path: Path
) -> None:
    old = load_or_create_signing_key(five_entries.parent)
    new = Ed25519PrivateKey.generate()
    payload = rotation_payload(old.public_key(), new, signed_by_previous=True, reason="t")
    payload["endorsement"] = "00" * 64
    _rotate(five_entries, old, payload)
    AuditLog(create_engine(f"sqlite:///{five_entries}"), new).append("test.event", {})
    failures = verify_entries(read_database_log(five_entries), old.public_key()).failures
    assert [(f.seq, f.problem) for f in failures] == [(6, "key-chain"), (7, "foreign-key")]
    assert "endorsement" in failures[0].detail
