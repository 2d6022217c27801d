"""Budget reports for the privacy officer, recomputed from the ledger's history.

Every ε here is recomputed by an accountant (:mod:`privacy.accountants`) from the stored
mechanisms, never read from stored per-round figures: the ledger's ``epsilon_after`` is
only shown beside the recomputed figure as a receipt, and a disagreement between the two
is flagged (it means the history or the accounting was altered after the fact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.audit_log import ROUND_COMPLETED, AuditEntry
from oralfed.privacy.events import DpSgdEvent, PrivacyEvent, mechanism_name, repetitions
from oralfed.privacy.ledger import Budget, BudgetChangeRecord, ChargeRecord, PrivacyLedger
from oralfed.schemas import protocol

__all__ = [
    "RECEIPT_TOLERANCE",
    "ChargePoint",
    "DatasetBudgetReport",
    "MechanismUse",
    "ReportedBudget",
    "cap_at",
    "cumulative_epsilons",
    "dataset_budget_report",
    "ledger_reports",
    "mechanisms_used",
    "reported_budgets",
]

# How far a receipt may sit from the recomputed ε before it is flagged: accountants are
# deterministic, so anything beyond floating-point noise is a real disagreement.
RECEIPT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class MechanismUse:
    """One distinct mechanism composed into a data set's history, and how often."""

    mechanism: str
    noise_multiplier: float
    sample_rate: float | None  # DP-SGD only
    repetitions: int  # DP-SGD steps or releases, over all charges
    charges: int


@dataclass(frozen=True)
class ChargePoint:
    """ε of the history up to and including one charge, recomputed, with its context."""

    charge_id: int
    recorded_at: datetime
    run_id: str
    round: int | None
    mechanism: str
    noise_multiplier: float
    sample_rate: float | None
    steps: int
    epsilon: float
    epsilon_recorded: float
    epsilon_cap: float  # the cap in force when the charge was made

    @property
    def receipt_matches(self) -> bool:
        return math.isclose(
            self.epsilon, self.epsilon_recorded, rel_tol=RECEIPT_TOLERANCE, abs_tol=1e-9
        )


@dataclass(frozen=True)
class DatasetBudgetReport:
    dataset_id: str
    accountant: str
    delta: float
    epsilon_cap: float
    spent: float
    remaining: float
    charges: int
    mechanisms: tuple[MechanismUse, ...]
    cap_changes: tuple[BudgetChangeRecord, ...]
    points: tuple[ChargePoint, ...] = field(default=())  # filled when built by_round

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "accountant": self.accountant,
            "delta": self.delta,
            "epsilon_cap": self.epsilon_cap,
            "epsilon_spent": self.spent,
            "epsilon_remaining": self.remaining,
            "charges": self.charges,
            "mechanisms": [vars(use) for use in self.mechanisms],
            "cap_changes": [
                {
                    "changed_at": change.changed_at.isoformat(),
                    "old_cap": change.old_cap,
                    "new_cap": change.new_cap,
                    "reason": change.reason,
                }
                for change in self.cap_changes
            ],
            "by_charge": [
                {
                    "charge_id": point.charge_id,
                    "recorded_at": point.recorded_at.isoformat(),
                    "run_id": point.run_id,
                    "round": point.round,
                    "mechanism": point.mechanism,
                    "noise_multiplier": point.noise_multiplier,
                    "sample_rate": point.sample_rate,
                    "steps": point.steps,
                    "epsilon": point.epsilon,
                    "epsilon_recorded": point.epsilon_recorded,
                    "receipt_matches": point.receipt_matches,
                    "epsilon_cap": point.epsilon_cap,
                }
                for point in self.points
            ],
        }


def cumulative_epsilons(
    events: Sequence[PrivacyEvent], delta: float, accountant: str
) -> list[float]:
    """ε after each prefix of ``events``: one full recomputation per prefix.

    Prefixes are recomputed, not differenced, because ε does not add up; the accountant
    merges identical events, so a long history of identical rounds stays cheap.
    """
    counter = get_accountant(accountant)
    return [counter.epsilon(events[: index + 1], delta) for index in range(len(events))]


def mechanisms_used(events: Sequence[PrivacyEvent]) -> tuple[MechanismUse, ...]:
    """The distinct mechanisms of a history, first-seen order, with their repetitions."""
    uses: dict[tuple[str, float, float | None], list[int]] = {}
    for event in events:
        rate = event.sample_rate if isinstance(event, DpSgdEvent) else None
        totals = uses.setdefault((mechanism_name(event), event.noise_multiplier, rate), [0, 0])
        totals[0] += repetitions(event)
        totals[1] += 1
    return tuple(
        MechanismUse(name, sigma, rate, total, charges)
        for (name, sigma, rate), (total, charges) in uses.items()
    )


def cap_at(changes: Sequence[BudgetChangeRecord], moment: datetime, default: float) -> float:
    """The cap in force at ``moment``: the latest change made at or before it."""
    caps = [change.new_cap for change in changes if change.changed_at <= moment]
    return caps[-1] if caps else default


def dataset_budget_report(
    budget: Budget,
    history: Sequence[ChargeRecord],
    changes: Sequence[BudgetChangeRecord],
    *,
    by_round: bool = False,
) -> DatasetBudgetReport:
    """One data set's :class:`DatasetBudgetReport` from its budget, charge history and cap
    changes."""
    events = [charge.event for charge in history]
    points: tuple[ChargePoint, ...] = ()
    if by_round:
        epsilons = cumulative_epsilons(events, budget.delta, budget.accountant)
        spent = epsilons[-1] if epsilons else 0.0
        points = tuple(
            ChargePoint(
                charge_id=charge.id,
                recorded_at=charge.recorded_at,
                run_id=charge.run_id,
                round=charge.round,
                mechanism=mechanism_name(charge.event),
                noise_multiplier=charge.event.noise_multiplier,
                sample_rate=(
                    charge.event.sample_rate if isinstance(charge.event, DpSgdEvent) else None
                ),
                steps=repetitions(charge.event),
                epsilon=epsilon,
                epsilon_recorded=charge.epsilon_after,
                epsilon_cap=cap_at(changes, charge.recorded_at, budget.epsilon_cap),
            )
            for charge, epsilon in zip(history, epsilons, strict=True)
        )
    else:  # the ledger already recomputed it over the same history for ``budget``
        spent = budget.spent
    return DatasetBudgetReport(
        dataset_id=budget.dataset_id,
        accountant=budget.accountant,
        delta=budget.delta,
        epsilon_cap=budget.epsilon_cap,
        spent=spent,
        remaining=max(0.0, budget.epsilon_cap - spent),
        charges=len(history),
        mechanisms=mechanisms_used(events),
        cap_changes=tuple(changes),
        points=points,
    )


def ledger_reports(
    ledger: PrivacyLedger, dataset_id: str | None = None, *, by_round: bool = False
) -> list[DatasetBudgetReport]:
    """Reports of every data set in ``ledger`` (or of ``dataset_id`` only)."""
    budgets = [ledger.budget(dataset_id)] if dataset_id is not None else ledger.datasets()
    return [
        dataset_budget_report(
            budget,
            ledger.history(budget.dataset_id),
            ledger.budget_changes(budget.dataset_id),
            by_round=by_round,
        )
        for budget in budgets
    ]


@dataclass(frozen=True)
class ReportedBudget:
    """A clinic's budget as it last *reported* it to the coordinator (not recomputed: the
    coordinator holds no ledger and can only relay what the clinic said)."""

    clinic_id: str
    epsilon_spent: float
    epsilon_cap: float
    delta: float
    accountant: str
    run_id: str
    round: int
    refusals: int  # rounds this clinic refused, with a reason, in the coordinator's log


def reported_budgets(entries: Sequence[AuditEntry]) -> list[ReportedBudget]:
    """The federation-wide view from the coordinator's audit log: per clinic, the latest ε
    figures it reported in a completed round, by clinic id (NaN for a clinic that only
    ever refused)."""
    latest: dict[str, ReportedBudget] = {}
    refusals: dict[str, int] = {}
    for entry in entries:
        if entry.kind != ROUND_COMPLETED:
            continue
        payload = entry.payload_data()
        for result in payload.get("clinics", []):
            clinic = str(result.get("clinic_id"))
            if result.get("status") == "refused" and result.get("phase") == "train":
                refusals[clinic] = refusals.get(clinic, 0) + 1
            metrics = result.get("metrics") or {}
            if result.get("status") != "ok" or protocol.EPSILON_SPENT not in metrics:
                continue
            latest[clinic] = ReportedBudget(
                clinic_id=clinic,
                epsilon_spent=_reported(metrics[protocol.EPSILON_SPENT]),
                epsilon_cap=_reported(metrics.get(protocol.EPSILON_CAP)),
                delta=_reported(metrics.get(protocol.DELTA)),
                accountant=str(result.get("accountant", "unknown")),
                run_id=str(payload.get("run_id")),
                round=_round(payload.get("round")),
                refusals=0,
            )
    for clinic in refusals.keys() - latest.keys():  # refused every round it was asked
        latest[clinic] = ReportedBudget(
            clinic, math.nan, math.nan, math.nan, "not reported", "", 0, 0
        )
    return [
        replace(budget, refusals=refusals.get(clinic, 0))
        for clinic, budget in sorted(latest.items())
    ]


def _reported(value: object) -> float:
    """A figure a clinic reported, as a float; NaN (shown as undefined) if it is not one: a
    clinic's word is relayed, and a hostile clinic's junk must not end the report."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def _round(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
