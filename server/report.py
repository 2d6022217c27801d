"""The federation report: model quality against baselines, and ε spent and left per clinic.

Privacy figures are those the clinics reported in their replies (each computed by the
clinic's own ledger over its whole history) and are labelled with δ and the accountant.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from schemas import protocol
from server.baselines import BaselineComparison
from server.history import ClinicResult


def clinic_privacy(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Latest privacy figures per clinic from round summaries, plus its participation."""
    privacy: dict[str, dict[str, Any]] = {}
    for summary in rounds:
        for entry in summary["clinics"]:
            result = ClinicResult(**entry)
            row = privacy.setdefault(result.clinic_id, {"rounds_trained": 0, "refusals": []})
            if result.status == "ok" and protocol.EPSILON_SPENT in result.metrics:
                spent, cap = (
                    result.metrics[protocol.EPSILON_SPENT],
                    result.metrics[protocol.EPSILON_CAP],
                )
                row.update(
                    epsilon_spent=spent,
                    epsilon_cap=cap,
                    epsilon_left=max(0.0, cap - spent),
                    delta=result.metrics[protocol.DELTA],
                    accountant=result.accountant,
                )
            if result.phase == "train":
                if result.status == "ok":
                    row["rounds_trained"] += 1
                else:
                    row["refusals"].append(
                        {
                            "round": summary["round"],
                            "status": result.status,
                            "reason": result.reason,
                        }
                    )
    return privacy


def build_report(
    *,
    run_id: str | None,
    status: str,
    message: str | None,
    settings: dict[str, Any],
    rounds: list[dict[str, Any]],
    comparison: BaselineComparison | None,
) -> dict[str, Any]:
    privacy = clinic_privacy(rounds)
    clinics = []
    for clinic_id in sorted(privacy):
        row: dict[str, Any] = {"clinic": clinic_id, **privacy[clinic_id]}
        if comparison is not None and clinic_id in comparison.federated.per_clinic:
            row["federated_dp"] = _figures(asdict(comparison.federated.per_clinic[clinic_id]))
            row["central_pooled"] = _figures(asdict(comparison.central.per_clinic[clinic_id]))
            row["local_only"] = _figures(asdict(comparison.local_only[clinic_id]))
        clinics.append(row)
    report: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "message": message,
        "settings": settings,
        # Every clinic trains with the engine its train config names, or refuses the round.
        "dp_engine": settings.get("dp_engine"),
        "clinics": clinics,
        "rounds": rounds,
    }
    if comparison is not None:
        federated_auc = comparison.federated.pooled.auc
        central_auc = comparison.central.pooled.auc
        report["overall"] = {
            "federated_dp": _figures(asdict(comparison.federated.pooled)),
            "central_pooled": _figures(asdict(comparison.central.pooled)),
            "local_only_mean_auc": comparison.local_only_mean_auc,
            "auc_gap_to_central": None
            if federated_auc is None or central_auc is None
            else central_auc - federated_auc,
        }
    return report


def _figures(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }
