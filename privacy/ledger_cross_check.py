"""The ledger's rows checked against what the audit log recorded about them.

A verified chain (:mod:`privacy.audit_verify`) proves the log was not edited; this proves
the *ledger* was not edited around it. It is the one module that knows both sides, so the
dependency runs one way: the ledger writes the audit log, and neither imports this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from oralfed.privacy.audit_log import BUDGET_CHANGED, DATASET_REGISTERED, LEDGER_CHARGE, AuditEntry
from oralfed.privacy.audit_verify import AuditFailure
from oralfed.privacy.events import event_to_dict
from oralfed.privacy.ledger import Budget, ChargeRecord

__all__ = ["cross_check_ledger"]


def cross_check_ledger(
    entries: Sequence[AuditEntry], charges: Sequence[ChargeRecord], budgets: Sequence[Budget]
) -> list[AuditFailure]:
    """Failures where the ledger's rows disagree with what the audit log recorded.

    Catches a charge row deleted to free budget, a row added or altered outside the
    ledger's API, and a cap changed without an audit entry.
    """
    audited: dict[int, tuple[int, AuditEntry, dict[str, Any]]] = {}
    caps: dict[str, Any] = {}
    for position, entry in enumerate(entries, start=1):
        try:
            payload = entry.payload_data()
        except ValueError:
            continue  # already reported as changed by verify_entries
        if not isinstance(payload, dict):
            continue
        if entry.kind == LEDGER_CHARGE and isinstance(payload.get("charge_id"), int):
            audited[payload["charge_id"]] = (position, entry, payload)
        elif entry.kind == DATASET_REGISTERED:
            caps[str(payload.get("dataset_id"))] = payload.get("epsilon_cap")
        elif entry.kind == BUDGET_CHANGED:
            caps[str(payload.get("dataset_id"))] = payload.get("new_cap")
    failures: list[AuditFailure] = []

    def mismatch(position: int, seq: int | None, detail: str) -> None:
        failures.append(AuditFailure(position, seq, "ledger-mismatch", detail))

    for charge in charges:
        found = audited.pop(charge.id, None)
        if found is None:
            mismatch(
                0,
                None,
                f"ledger charge {charge.id} has no audit entry (written around the ledger's API)",
            )
            continue
        position, entry, payload = found
        stored = {
            "dataset_id": charge.dataset_id,
            "run_id": charge.run_id,
            "round": charge.round,
            **event_to_dict(charge.event),
            "epsilon_after": charge.epsilon_after,
        }
        differing = sorted(key for key, value in stored.items() if payload.get(key) != value)
        if differing:
            mismatch(
                position,
                entry.seq,
                f"ledger charge {charge.id} differs from its audit entry in {', '.join(differing)}",
            )
    for charge_id, (position, entry, _) in sorted(audited.items()):
        mismatch(
            position,
            entry.seq,
            f"ledger charge {charge_id} was audited but is missing "
            "from the ledger (deleted: its budget was freed)",
        )
    for budget in budgets:
        if caps.get(budget.dataset_id) != budget.epsilon_cap:
            mismatch(
                0,
                None,
                f"data set {budget.dataset_id!r} has cap {budget.epsilon_cap:g} "
                f"in the ledger but {caps.get(budget.dataset_id)} in the audit log",
            )
    return failures
