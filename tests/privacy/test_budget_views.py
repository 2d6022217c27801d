"""Budget views of a state dir: a clinic's recomputed budgets and chart, the coordinator's
relayed view, and ledger refusals that carry the ledger's exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from oralfed.privacy.audit_log import ROUND_COMPLETED, AuditLog
from oralfed.privacy.budget_plot import BudgetPlotError, plot_budgets
from oralfed.privacy.budget_views import ClinicBudgets, FederationBudgets, budget_view
from oralfed.privacy.keys import load_or_create_signing_key
from oralfed.privacy.ledger import LedgerError, PrivacyLedger, UnknownDataset
from oralfed.schemas.errors import ExitCode
from oralfed.server.coordinator_db import CoordinatorStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_clinic_view_is_recomputed_from_its_ledger(clinic: Path) -> None:
    view = budget_view(clinic)
    assert isinstance(view, ClinicBudgets) and view.chart is None
    (report,) = view.reports
    assert (report.dataset_id, report.charges, report.points) == ("clinic-01", 2, ())
    (by_round,) = budget_view(clinic, by_round=True).reports
    assert [point.round for point in by_round.points] == [1, 2]


def test_a_chart_is_drawn_from_every_charge(clinic: Path, tmp_path: Path) -> None:
    chart = tmp_path / "charts" / "budget.png"
    view = budget_view(clinic, chart=chart)
    assert isinstance(view, ClinicBudgets) and view.chart == chart
    assert len(view.reports[0].points) == 2  # charted even without by_round
    assert chart.read_bytes().startswith(PNG_MAGIC)


def test_a_chart_is_png_whatever_its_name_and_unwritable_is_refused(
    clinic: Path, tmp_path: Path
) -> None:
    reports = budget_view(clinic, by_round=True).reports
    plot_budgets(reports, tmp_path / "chart.img")
    assert (tmp_path / "chart.img").read_bytes().startswith(PNG_MAGIC)
    (tmp_path / "file").write_text("")
    with pytest.raises(BudgetPlotError, match="cannot write the budget chart") as refused:
        plot_budgets(reports, tmp_path / "file" / "chart.png")
    assert refused.value.exit_code is ExitCode.USAGE


def test_ledger_refusals_carry_the_ledger_exit_code(clinic: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownDataset, match="not registered"):
        budget_view(clinic, dataset="nope")
    with pytest.raises(LedgerError, match=r"no ledger\.db") as refused:
        budget_view(tmp_path / "empty")
    assert refused.value.exit_code is ExitCode.LEDGER
    assert str(refused.value).startswith("state dir ")
    with PrivacyLedger.in_state_dir(tmp_path / "new"):
        pass
    with pytest.raises(LedgerError, match="no data set is registered"):
        budget_view(tmp_path / "new")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "ledger.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 2000)
    with pytest.raises(LedgerError, match="not a readable ledger database"):
        budget_view(tmp_path / "corrupt")


def test_the_coordinator_view_is_relayed_and_says_if_its_log_verifies(tmp_path: Path) -> None:
    log = AuditLog(
        CoordinatorStore.sqlite_file(tmp_path / "coordinator.db").engine,
        load_or_create_signing_key(tmp_path),
    )
    reported = {
        "clinic_id": "clinic-01",
        "phase": "train",
        "status": "ok",
        "accountant": "pld",
        "metrics": {"epsilon-spent": 1.25, "epsilon-cap": 5.0, "delta": 1e-5},
    }
    log.append(ROUND_COMPLETED, {"run_id": "run-1", "round": 1, "clinics": [reported]})
    view = budget_view(tmp_path, dataset="ignored", chart=tmp_path / "ignored.png")
    assert isinstance(view, FederationBudgets) and view.log_verified
    assert not (tmp_path / "ignored.png").exists()
    document = view.to_dict()
    assert (document["reported_by_clinics"], document["source"]) == (
        True,
        str(tmp_path / "coordinator.db"),
    )
    assert document["clinics"][0]["epsilon_spent"] == 1.25
