"""The budgets a state dir can show: a clinic's own, or the federation's as the clinics said.

A clinic's state dir holds its ledger, and its budgets are recomputed from the whole
history there (:mod:`privacy.budget_report`): that figure is authoritative only while the
ledger matches its signed audit log, so a clinic's view always carries the verification of
the log and of the ledger beside it (:func:`~privacy.audit_targets.verify_target`, the same
check as ``oralfed audit verify``): a ledger edited to free budget cannot be reported
quietly. Reporting opens the ledger read-only and writes nothing. The coordinator
holds no ledger, only its signed log of rounds, in which each clinic reported its own
figures; that view is relayed, never recomputed, and carries whether the coordinator's log
still verifies, so that it is never taken for more than it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from oralfed.privacy.audit_log import json_safe
from oralfed.privacy.audit_targets import (
    COORDINATOR_DATABASE,
    LEDGER_DATABASE,
    VerificationReport,
    open_target,
    read_ledger,
    verify_target,
)
from oralfed.privacy.audit_verify import verify_entries
from oralfed.privacy.budget_plot import plot_budgets
from oralfed.privacy.budget_report import (
    DatasetBudgetReport,
    ReportedBudget,
    ledger_reports,
    reported_budgets,
)
from oralfed.privacy.ledger import LedgerError, UnaccountableCharge

__all__ = [
    "ClinicBudgets",
    "FederationBudgets",
    "budget_view",
    "clinic_budgets",
    "federation_budgets",
]


@dataclass(frozen=True)
class ClinicBudgets:
    """A clinic's budgets, recomputed from its ledger, with the verification of its log and
    ledger rows; ``chart`` is the PNG written, if any (never for a ledger that failed it)."""

    reports: tuple[DatasetBudgetReport, ...]
    verification: VerificationReport
    chart: Path | None = None
    # Why no figures could be computed: a ledger row that no release can have (an edit the
    # verification names), so there are no reports, only the failures.
    unaccountable: str | None = None


@dataclass(frozen=True)
class FederationBudgets:
    """What each clinic last reported to the coordinator, and whether that log verifies."""

    source: Path
    log_verified: bool
    budgets: tuple[ReportedBudget, ...]
    head_hash: str = ""  # the verified log's head, to anchor a later verification

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "reported_by_clinics": True,
            "coordinator_log_verified": self.log_verified,
            "coordinator_log_head": self.head_hash,
            "clinics": [json_safe(vars(budget)) for budget in self.budgets],
        }


def budget_view(
    state_dir: Path,
    *,
    dataset: str | None = None,
    by_round: bool = False,
    chart: Path | None = None,
) -> ClinicBudgets | FederationBudgets:
    """The budgets of a clinic's state dir, or the federation view of the coordinator's.

    The federation view is one figure per clinic, so ``dataset``, ``by_round`` and
    ``chart`` apply to a clinic's ledger only.
    """
    if not (state_dir / LEDGER_DATABASE).is_file() and (state_dir / COORDINATOR_DATABASE).is_file():
        return federation_budgets(state_dir)
    return clinic_budgets(state_dir, dataset=dataset, by_round=by_round, chart=chart)


def clinic_budgets(
    state_dir: Path,
    *,
    dataset: str | None = None,
    by_round: bool = False,
    chart: Path | None = None,
) -> ClinicBudgets:
    """Every data set's report (or ``dataset``'s), each charge's ε with ``by_round``, and the
    ``chart`` written when asked for (which needs each charge's ε too), all checked against
    the signed log: a chart is drawn only from a ledger that matches it, so that no picture
    of an edited ledger circulates without its failures.

    :class:`~privacy.ledger.LedgerError` when the state dir has no readable ledger or the
    ledger knows no data set; the verification's own refusals (an unreadable log or key)
    as :func:`~privacy.audit_targets.verify_target` raises them.
    """
    path = state_dir / LEDGER_DATABASE
    if not path.is_file():
        raise LedgerError(
            f"state dir {state_dir}: no {LEDGER_DATABASE} (is this a clinic's state dir?)"
        )
    unaccountable: str | None = None
    try:
        with read_ledger(path) as ledger:
            reports = ledger_reports(ledger, dataset, by_round=by_round or chart is not None)
    except SQLAlchemyError as error:
        reason = getattr(error, "orig", None) or error
        raise LedgerError(f"{path}: not a readable ledger database ({reason})") from None
    except (UnaccountableCharge, ValueError, ArithmeticError) as error:
        # A stored row no event can be made of (σ below the floor, a count of 0: the
        # ledger refuses to charge those, so the row was edited), or an accountant that
        # cannot account it: no figure can be given, the verification says what differs.
        reports, unaccountable = [], f"{path}: the ledger's history cannot be accounted ({error})"
    if not reports and unaccountable is None:
        raise LedgerError(f"{path}: no data set is registered in this ledger")
    verification = verify_target(state_dir=state_dir)
    if unaccountable is not None:
        if verification.ok:  # the log supports these rows, yet no ε can be given for them
            raise LedgerError(unaccountable)
        return ClinicBudgets((), verification, unaccountable=unaccountable)
    if chart is None or not verification.ok:
        return ClinicBudgets(tuple(reports), verification)
    plot_budgets(reports, chart)
    return ClinicBudgets(tuple(reports), verification, chart)


def federation_budgets(state_dir: Path) -> FederationBudgets:
    """The coordinator's view: per clinic, the figures it last reported in a round."""
    target = open_target(state_dir=state_dir)
    result = verify_entries(target.entries, target.public_key)
    return FederationBudgets(
        target.source, result.ok, tuple(reported_budgets(target.entries)), result.head_hash
    )
