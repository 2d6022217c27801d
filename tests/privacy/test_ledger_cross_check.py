"""The ledger cross-check: ledger rows edited, added or deleted around the audit log are caught,
each failure naming its entry and row; garbage in a row is a finding, never a traceback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from oralfed.privacy.audit_log import database_log, reading_database
from oralfed.privacy.audit_verify import AuditFailure
from oralfed.privacy.events import DpSgdEvent, GaussianEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.privacy.ledger_cross_check import cross_check_ledger, read_ledger_rows

DELTA = 1e-5
ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


def _failures(state_dir: Path) -> list[AuditFailure]:
    database = state_dir / "ledger.db"
    with reading_database(database) as connection:
        entries = database_log(connection, database)
        rows = read_ledger_rows(connection)
    return cross_check_ledger(entries, rows)


def _cross_check(state_dir: Path) -> list[str]:
    return [f.detail for f in _failures(state_dir)]


def _sql(state_dir: Path, *statements: str) -> None:
    connection = sqlite3.connect(state_dir / "ledger.db")
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


def _without_constraints(table: str) -> list[str]:
    """Statements rebuilding ``table`` without its NOT NULL constraints, as an insider with
    write access to the file can."""
    return [
        f"CREATE TABLE copy AS SELECT * FROM {table}",
        f"DROP TABLE {table}",
        f"ALTER TABLE copy RENAME TO {table}",
    ]


@pytest.fixture
def charged(state_dir: Path) -> Iterator[Path]:
    """Registered (entry 1), charged twice (entries 2 and 3), cap raised (entry 4)."""
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=10.0, delta=DELTA, accountant="rdp")
        for round_number in (1, 2):
            ledger.charge("clinic-01", ROUND, run_id="run-1", round=round_number)
        ledger.ensure_dataset("clinic-01", epsilon_cap=12.0, delta=DELTA, accountant="rdp")
    assert _cross_check(state_dir) == []
    yield state_dir


def test_charge_deleted_from_the_ledger_to_free_budget_is_caught(charged: Path) -> None:
    _sql(charged, "DELETE FROM ledger_charges WHERE id = 2")
    deleted, epsilon = _failures(charged)
    assert (deleted.seq, deleted.ledger_row, deleted.detail) == (
        3,
        "ledger_charges[id=2]",
        "ledger charge 2 was audited but is missing from the ledger (deleted: its budget was "
        "freed)",
    )
    assert epsilon.seq == 1 and "1 charge(s)) but its logged history gives" in epsilon.detail


def test_ledger_rows_edited_or_added_around_the_api_are_caught(charged: Path) -> None:
    _sql(
        charged,
        "UPDATE ledger_charges SET noise_multiplier = 8.0 WHERE id = 1",
        "UPDATE ledger_datasets SET epsilon_cap = 50.0",
        "INSERT INTO ledger_charges (dataset_id, recorded_at, run_id, round, mechanism, "
        "noise_multiplier, sample_rate, steps, delta, epsilon_after) VALUES "
        "('clinic-01', '2026-01-01 00:00:00', 'x', 3, 'dpsgd', 2.0, 0.05, 100, 1e-5, 1.0)",
    )
    failures = _failures(charged)
    by_row = {(f.ledger_row, f.seq): f.detail for f in failures}
    assert by_row[("ledger_datasets[dataset_id='clinic-01']", 4)] == (
        "ledger data set 'clinic-01' has epsilon_cap 50 where this entry set 12"
    )
    assert by_row[("ledger_charges[id=1]", 2)] == (
        "ledger charge 1 differs from its audit entry in noise_multiplier (8 in the ledger, "
        "2 in the log)"
    )
    assert by_row[("ledger_charges[id=3]", None)].startswith("ledger charge 3 has no audit entry")
    assert "the ledger's rows give ε=" in by_row[("ledger_datasets[dataset_id='clinic-01']", 1)]
    assert len(failures) == 4


@pytest.mark.parametrize(
    ("statement", "seq", "detail"),
    [
        (
            "DELETE FROM ledger_budget_changes WHERE id = 2",
            4,
            "ledger budget change 2 was audited but is missing from the ledger (deleted)",
        ),
        (
            "UPDATE ledger_budget_changes SET new_cap = 99.0 WHERE id = 2",
            4,
            "ledger budget change 2 differs from its audit entry in new_cap (99 in the ledger, "
            "12 in the log)",
        ),
        (
            "INSERT INTO ledger_budget_changes (dataset_id, changed_at, old_cap, new_cap) "
            "VALUES ('clinic-01', '2026-01-01 00:00:00', 12.0, 40.0)",
            None,
            "ledger budget change 3 (data set 'clinic-01', cap 12 → 40) has no audit entry "
            "(written around the ledger's API)",
        ),
    ],
)
def test_cap_change_rows_are_bound_to_their_entries(
    charged: Path, statement: str, seq: int | None, detail: str
) -> None:
    _sql(charged, statement)
    assert [(f.seq, f.detail) for f in _failures(charged)] == [(seq, detail)]


def test_a_deleted_data_set_row_is_caught(charged: Path) -> None:
    _sql(charged, "DELETE FROM ledger_datasets")
    (failure,) = _failures(charged)
    assert (failure.seq, failure.ledger_row) == (1, "ledger_datasets[dataset_id='clinic-01']")
    assert "is missing from the ledger (its row was deleted" in failure.detail


def test_delta_and_accountant_changed_before_any_charge_are_audited(state_dir: Path) -> None:
    """The ledger allows that change (there is no history to re-interpret): it writes no cap
    change row, but the log records it, so the new values verify and an edit does not."""
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=5.0, delta=DELTA)
        ledger.ensure_dataset("clinic-01", epsilon_cap=5.0, delta=1e-6, accountant="rdp")
        ledger.charge("clinic-01", GaussianEvent(noise_multiplier=5.0), run_id="run-1")
    assert _cross_check(state_dir) == []
    _sql(state_dir, "UPDATE ledger_datasets SET delta = 1e-5")
    (changed, epsilon) = _failures(state_dir)
    assert (changed.seq, changed.detail) == (
        2,
        "ledger data set 'clinic-01' has delta 1e-05 where this entry set 1e-06",
    )
    assert epsilon.seq == 1


def test_a_charge_made_while_the_budget_row_was_edited_is_caught_after_it_is_put_back(
    charged: Path,
) -> None:
    _sql(charged, "UPDATE ledger_datasets SET delta = 0.5, accountant = 'pld'")
    with PrivacyLedger.in_state_dir(charged) as ledger:
        ledger.charge("clinic-01", ROUND, run_id="run-1", round=3)
    _sql(charged, f"UPDATE ledger_datasets SET delta = {DELTA}, accountant = 'rdp'")
    failures = _failures(charged)
    assert {(f.seq, f.detail.split(",")[0]) for f in failures} >= {
        (5, "this charge of data set 'clinic-01' was accounted with delta 0.5"),
        (5, "this charge of data set 'clinic-01' was accounted with accountant 'pld'"),
    }
    assert any(f.seq == 5 and "the logged history up to it gives" in f.detail for f in failures)


def test_a_charge_made_on_an_edited_history_is_caught_after_it_is_put_back(
    charged: Path,
) -> None:
    """σ of an earlier charge raised for one charge and restored: every row matches its
    entry again, but the last receipt is not what the logged history gives."""
    _sql(charged, "UPDATE ledger_charges SET noise_multiplier = 20.0 WHERE id = 1")
    with PrivacyLedger.in_state_dir(charged) as ledger:
        ledger.charge("clinic-01", ROUND, run_id="run-1", round=3)
    _sql(charged, "UPDATE ledger_charges SET noise_multiplier = 2.0 WHERE id = 1")
    (failure,) = _failures(charged)
    assert (failure.seq, failure.ledger_row) == (5, None)
    assert failure.detail.startswith("charge 3 recorded ε=")
    assert "the ledger's history was different when it charged" in failure.detail


def test_a_charge_after_a_deleted_one_shows_the_gap_in_its_receipts(charged: Path) -> None:
    """SQLite hands the freed id to the next charge: its entry records charge 2 a second
    time, after a receipt the log never recorded."""
    _sql(charged, "DELETE FROM ledger_charges WHERE id = 2")
    with PrivacyLedger.in_state_dir(charged) as ledger:
        assert ledger.charge("clinic-01", ROUND, run_id="run-1", round=3).id == 2
    details = [f.detail for f in _failures(charged) if f.seq == 5]
    assert details[0].startswith("charge 2 was made when the ledger's last receipt was ε=")
    assert (
        "but the log's previous charge of data set 'clinic-01' is charge 2 (entry 3)"
        in (details[0])
    )
    assert details[1] == "it records ledger charge 2 again (first in entry 3)"


@pytest.mark.parametrize(
    ("assignment", "shown"),
    [
        ("noise_multiplier = NULL", "noise_multiplier (NULL in the ledger, 2 in the log)"),
        ("steps = 'many'", "steps ('many' in the ledger, 100 in the log)"),
        ("mechanism = X'00ff'", "mechanism (b'\\x00\\xff' in the ledger, 'dpsgd' in the log)"),
        ("round = 1.5", "round (1.5 in the ledger, 1 in the log)"),
        ("delta = '1e-05x'", "delta ('1e-05x' in the ledger, 1e-05 in the log)"),
    ],
)
def test_garbage_in_a_charge_row_is_reported_by_entry(
    charged: Path, assignment: str, shown: str
) -> None:
    _sql(charged, *_without_constraints("ledger_charges"))
    _sql(charged, f"UPDATE ledger_charges SET {assignment} WHERE id = 1")
    failures = _failures(charged)
    assert failures[0].seq == 2 and failures[0].ledger_row == "ledger_charges[id=1]"
    assert failures[0].detail == f"ledger charge 1 differs from its audit entry in {shown}"


@pytest.mark.parametrize(
    "assignment", ["delta = NULL", "delta = 'tiny'", "accountant = 7", "epsilon_cap = X'01'"]
)
def test_garbage_in_a_data_set_row_is_reported_not_raised(charged: Path, assignment: str) -> None:
    _sql(charged, *_without_constraints("ledger_datasets"))
    _sql(charged, f"UPDATE ledger_datasets SET {assignment}")
    failures = _failures(charged)
    assert failures and all(f.ledger_row for f in failures)
    assert failures[0].detail.startswith("ledger data set 'clinic-01' has ")


def test_unreadable_log_entries_bind_nothing_and_raise_nothing(charged: Path) -> None:
    """A payload turned into NaN, a non-object or garbage is verification's to report; the
    cross-check sees its charge as unaudited instead of failing."""
    _sql(
        charged,
        "UPDATE audit_log SET payload = replace(payload, '\"round\":1', '\"round\":NaN') "
        "WHERE seq = 2",
        "UPDATE audit_log SET payload = '[1, 2]' WHERE seq = 3",
    )
    details = _cross_check(charged)
    assert details[:2] == [
        "ledger charge 1 has no audit entry (written around the ledger's API)",
        "ledger charge 2 has no audit entry (written around the ledger's API)",
    ]
