"""The ledger cross-check: ledger rows edited, added or deleted around the audit log are caught."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from oralfed.privacy.audit_log import read_database_log
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.privacy.ledger_cross_check import cross_check_ledger

DELTA = 1e-5
ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


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
