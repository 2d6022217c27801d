"""What a clinic's privacy officer sees: its budgets, charges, refusals, policy, imports and
the verification of its audit log, from its state dir.

Built with the functions ``oralfed audit budget`` and ``oralfed audit verify`` call
(:func:`~oralfed.privacy.budget_views.clinic_budgets`: ε recomputed from the whole history,
beside the verification of the signed log and of the ledger's rows against it), read-only.
The charges' ε over time is each charge's receipt (ε of the history up to it, computed when
it was charged), which the verification checks against the log; the current figure is the
recomputation. Imports are shown by their counts only, as the log records them: no
patient-level value is in the state dir's log, and none is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oralfed.privacy.audit_log import (
    DATA_IMPORTED,
    LEDGER_REFUSED,
    POLICY_IN_FORCE,
    AuditEntry,
    read_database_log,
)
from oralfed.privacy.audit_targets import LEDGER_DATABASE, read_ledger
from oralfed.privacy.budget_views import ClinicBudgets, clinic_budgets
from oralfed.privacy.ledger import ChargeRecord

__all__ = ["ClinicView", "RefusalRow", "clinic_view"]


@dataclass(frozen=True)
class RefusalRow:
    """A charge the ledger refused (the cap would have been passed): nothing was released."""

    dataset_id: str
    recorded_at: str
    run_id: str
    round: int | None
    mechanism: str
    epsilon_before: float
    epsilon_would_be: float
    epsilon_cap: float


@dataclass(frozen=True)
class ClinicView:
    state_dir: Path
    budgets: ClinicBudgets
    charges: tuple[ChargeRecord, ...]  # oldest first
    refusals: tuple[RefusalRow, ...]
    imports: tuple[dict[str, Any], ...]  # the log's data.imported payloads: counts only
    policy: dict[str, Any] | None  # the policy the ClientApp last recorded as in force

    @property
    def verified(self) -> bool:
        return self.budgets.verification.ok

    def charges_of(self, dataset_id: str) -> list[ChargeRecord]:
        return [charge for charge in self.charges if charge.dataset_id == dataset_id]


def clinic_view(state_dir: Path) -> ClinicView:
    """The clinic's whole view; :class:`~oralfed.privacy.ledger.LedgerError` or
    :class:`~oralfed.privacy.audit_log.AuditError` (naming the file) when the state dir
    holds no readable ledger or log."""
    budgets = clinic_budgets(state_dir)
    with read_ledger(state_dir / LEDGER_DATABASE) as ledger:
        charges = [
            charge for budget in ledger.datasets() for charge in ledger.history(budget.dataset_id)
        ]
    entries = read_database_log(state_dir / LEDGER_DATABASE)
    policies = [_payload(entry) for entry in entries if entry.kind == POLICY_IN_FORCE]
    return ClinicView(
        state_dir=state_dir,
        budgets=budgets,
        charges=tuple(sorted(charges, key=lambda charge: charge.recorded_at)),
        refusals=tuple(_refusal(entry) for entry in entries if entry.kind == LEDGER_REFUSED),
        imports=tuple(
            {"recorded_at": entry.recorded_at, **_payload(entry)}
            for entry in entries
            if entry.kind == DATA_IMPORTED
        ),
        policy=policies[-1] if policies else None,
    )


def _refusal(entry: AuditEntry) -> RefusalRow:
    payload = _payload(entry)
    round_ = payload.get("round")
    return RefusalRow(
        dataset_id=str(payload.get("dataset_id")),
        recorded_at=entry.recorded_at,
        run_id=str(payload.get("run_id")),
        round=round_ if isinstance(round_, int) else None,
        mechanism=str(payload.get("mechanism")),
        epsilon_before=_number(payload.get("epsilon_before")),
        epsilon_would_be=_number(payload.get("epsilon_would_be")),
        epsilon_cap=_number(payload.get("epsilon_cap")),
    )


def _payload(entry: AuditEntry) -> dict[str, Any]:
    """An entry's payload as a mapping; an edited entry may hold anything (the verification
    beside it says so), and is shown as what little it holds, never as an error."""
    try:
        data = entry.payload_data()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")
