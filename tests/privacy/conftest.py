"""Fixtures of the audit tests: a clinic state directory and a small, untouched signed log."""

from __future__ import annotations

from pathlib import Path

import pytest

from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.keys import PUBLIC_KEY_FILE
from oralfed.privacy.ledger import PrivacyLedger


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "clinic"


ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


@pytest.fixture
def clinic(state_dir: Path) -> Path:
    """A clinic state dir: one data set registered and charged twice (three entries)."""
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=5.0, delta=1e-5)
        for round_number in (1, 2):
            ledger.charge("clinic-01", ROUND, run_id="run-1", round=round_number)
    return state_dir


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
