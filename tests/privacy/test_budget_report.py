"""Budget reports against known histories: recomputed ε, mechanisms composed, caps in force."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oralfed.privacy.accountants import PldAccountant, RdpAccountant
from oralfed.privacy.audit_log import ROUND_COMPLETED, RUN_STARTED, AuditLog, read_database_log
from oralfed.privacy.budget_report import (
    cumulative_epsilons,
    ledger_reports,
    mechanisms_used,
    reported_budgets,
)
from oralfed.privacy.events import DpSgdEvent, GaussianEvent, LaplaceEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.server.coordinator_db import CoordinatorStore

DELTA = 1e-5
ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)
RELEASE = GaussianEvent(noise_multiplier=5.0)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[PrivacyLedger]:
    with PrivacyLedger.in_state_dir(tmp_path / "state") as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=8.0, delta=DELTA)
        ledger.charge("clinic-01", ROUND, run_id="run-1", round=1)
        ledger.charge("clinic-01", RELEASE, run_id="query-1")
        ledger.ensure_dataset("clinic-01", epsilon_cap=9.0, delta=DELTA, reason="approved")
        ledger.charge("clinic-01", ROUND, run_id="run-1", round=2)
        yield ledger


def test_report_recomputes_every_prefix_of_the_history(ledger: PrivacyLedger) -> None:
    (report,) = ledger_reports(ledger, by_round=True)
    pld = PldAccountant()
    expected = [
        pld.epsilon([ROUND], DELTA),
        pld.epsilon([ROUND, RELEASE], DELTA),
        pld.epsilon([ROUND, RELEASE, ROUND], DELTA),
    ]
    assert [p.epsilon for p in report.points] == pytest.approx(expected)
    assert report.spent == pytest.approx(expected[-1]) == pytest.approx(ledger.spent("clinic-01"))
    assert report.remaining == pytest.approx(9.0 - expected[-1])
    assert (report.accountant, report.delta, report.epsilon_cap, report.charges) == (
        "pld",
        DELTA,
        9.0,
        3,
    )
    assert [p.round for p in report.points] == [1, None, 2]
    assert all(p.receipt_matches for p in report.points)
    # The cap in force when each charge was made, not today's cap.
    assert [p.epsilon_cap for p in report.points] == [8.0, 8.0, 9.0]
    assert [(c.old_cap, c.new_cap, c.reason) for c in report.cap_changes] == [
        (None, 8.0, "registered"),
        (8.0, 9.0, "approved"),
    ]


def test_composition_is_not_a_sum_of_rounds(ledger: PrivacyLedger) -> None:
    (report,) = ledger_reports(ledger, by_round=True)
    increments = [report.points[0].epsilon] + [
        later.epsilon - earlier.epsilon
        for earlier, later in zip(report.points, report.points[1:], strict=False)
    ]
    standalone = [PldAccountant().epsilon([event], DELTA) for event in (ROUND, RELEASE, ROUND)]
    assert sum(standalone) > report.spent == pytest.approx(sum(increments))


def test_mechanisms_composed_are_listed_once_with_their_totals(ledger: PrivacyLedger) -> None:
    (report,) = ledger_reports(ledger)
    assert [
        (m.mechanism, m.noise_multiplier, m.sample_rate, m.repetitions, m.charges)
        for m in report.mechanisms
    ] == [
        ("dpsgd", 2.0, 0.05, 200, 2),
        ("gaussian", 5.0, None, 1, 1),
    ]
    assert report.points == ()  # only with by_round


def test_altered_history_shows_as_a_receipt_mismatch(ledger: PrivacyLedger, tmp_path: Path):
    connection = sqlite3.connect(tmp_path / "state" / "ledger.db")
    connection.execute("UPDATE ledger_charges SET noise_multiplier = 4.0 WHERE id = 3")
    connection.commit()
    connection.close()
    (report,) = ledger_reports(ledger, by_round=True)
    assert [p.receipt_matches for p in report.points] == [True, True, False]


def test_report_of_one_dataset_and_json_form(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-02", epsilon_cap=1.0, delta=1e-6, accountant="rdp")
    ledger.charge("clinic-02", LaplaceEvent(noise_multiplier=10.0, count=3), run_id="q")
    assert [r.dataset_id for r in ledger_reports(ledger)] == ["clinic-01", "clinic-02"]
    (report,) = ledger_reports(ledger, "clinic-02", by_round=True)
    assert report.spent == pytest.approx(RdpAccountant().epsilon([LaplaceEvent(10.0, 3)], 1e-6))
    data = report.to_dict()
    assert data["accountant"] == "rdp" and data["delta"] == 1e-6
    assert data["by_charge"][0]["steps"] == 3
    assert data["epsilon_remaining"] == pytest.approx(1.0 - report.spent)


def test_helpers_on_empty_and_mixed_histories() -> None:
    assert cumulative_epsilons([], DELTA, "pld") == []
    assert mechanisms_used([]) == ()
    with pytest.raises(ValueError, match="delta"):
        cumulative_epsilons([ROUND], 1.0, "pld")


def coordinator_log(path: Path) -> AuditLog:
    log = AuditLog(CoordinatorStore.sqlite_file(path).engine, Ed25519PrivateKey.generate())
    log.append(RUN_STARTED, {"run_id": "r1", "settings": {}})
    return log


def clinic_result(clinic: str, status: str, spent: float | None = None) -> dict[str, object]:
    metrics = {} if spent is None else {"epsilon-spent": spent, "epsilon-cap": 5.0, "delta": 1e-5}
    return {
        "clinic_id": clinic,
        "phase": "train",
        "status": status,
        "metrics": metrics,
        "accountant": "pld",
        "reason": None if status == "ok" else "budget",
    }


def test_federation_view_is_what_clinics_last_reported(tmp_path: Path) -> None:
    log = coordinator_log(tmp_path / "coordinator.db")
    log.append(
        ROUND_COMPLETED,
        {
            "run_id": "r1",
            "round": 1,
            "clinics": [
                clinic_result("clinic-b", "ok", 1.0),
                clinic_result("clinic-a", "ok", 2.0),
                clinic_result("clinic-c", "refused"),
            ],
        },
    )
    log.append(
        ROUND_COMPLETED,
        {
            "run_id": "r1",
            "round": 2,
            "clinics": [clinic_result("clinic-b", "ok", 1.5), clinic_result("clinic-a", "refused")],
        },
    )
    budgets = reported_budgets(read_database_log(tmp_path / "coordinator.db"))
    assert [(b.clinic_id, b.epsilon_spent, b.round, b.refusals) for b in budgets[:2]] == [
        ("clinic-a", 2.0, 1, 1),
        ("clinic-b", 1.5, 2, 0),
    ]
    assert budgets[2].clinic_id == "clinic-c" and math.isnan(budgets[2].epsilon_spent)
    assert (budgets[0].epsilon_cap, budgets[0].delta, budgets[0].accountant) == (5.0, 1e-5, "pld")
