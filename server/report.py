"""The federation report: model quality against baselines, and ε spent and left per clinic.

Privacy figures are those the clinics reported in their replies (each computed by the
clinic's own ledger over its whole history) and are labelled with δ and the accountant.
"""

from __future__ import annotations

from typing import Any

from oralfed.schemas import protocol
from oralfed.server.history import ClinicResult

REPORT_FILE = "report.json"


def clinic_privacy(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Latest privacy figures per clinic from round summaries, plus its participation."""
    privacy: dict[str, dict[str, Any]] = {}
    for summary in rounds:
        for entry in summary["clinics"]:
            result = ClinicResult(**entry)
            row = privacy.setdefault(
                result.clinic_id, {"rounds_trained": 0, "refusals": [], "clipped": []}
            )
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
                    if result.clipped_to is not None:
                        row["clipped"].append(
                            {
                                "round": summary["round"],
                                "norm": result.update_norm,
                                "bound": result.clipped_to,
                            }
                        )
                else:
                    row["refusals"].append(
                        {
                            "round": summary["round"],
                            "status": result.status,
                            "reason": result.reason,
                        }
                    )
    return privacy


def update_checks(settings: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """What the coordinator's checks did to the clinics' replies (server/update_checks.py):
    the aggregation, the norm bound, every rejected reply and every clipped update."""
    return {
        "aggregation": settings.get("aggregation"),
        "hostile_clinics_tolerated": settings.get("hostile_clinics")
        if settings.get("aggregation") not in (None, "mean")
        else 0,
        "update_norm_bound": settings.get("update_norm_bound"),
        "rejected": [
            {"round": summary["round"], **entry}
            for summary in rounds
            for entry in summary.get("rejected", [])
        ],
        "clipped": [
            {"round": summary["round"], **entry}
            for summary in rounds
            for entry in summary.get("clipped", [])
        ],
    }


def secure_aggregation(settings: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether training ran under SecAgg+ and, per round, its parameters (shares,
    reconstruction threshold, quantisation) and the clinics that dropped out after sharing
    their keys (``oralfed.server.secure_aggregation``)."""
    return {
        "enabled": bool(settings.get("secure_aggregation")),
        "threshold_fraction": settings.get("secagg_threshold"),
        "max_weight": settings.get("secagg_max_weight"),
        "rounds": [
            {"round": summary["round"], **summary["secure_aggregation"]}
            for summary in rounds
            if summary.get("secure_aggregation")
        ],
    }


def build_run_report(
    *,
    run_id: str | None,
    status: str,
    message: str | None,
    settings: dict[str, Any],
    rounds: list[dict[str, Any]],
) -> dict[str, Any]:
    """The run's report from its round summaries: status, settings, ε per clinic, rounds.

    A simulated run adds its baselines afterwards (``oralfed.deploy.baselines``); the
    coordinator itself holds no data to train them.
    """
    privacy = clinic_privacy(rounds)
    evaluated = [summary["evaluation"] for summary in rounds if summary.get("evaluation")]
    return {
        "run_id": run_id,
        "status": status,
        "message": message,
        "settings": settings,
        # Every clinic trains with the engine its train config names, or refuses the round.
        "dp_engine": settings.get("dp_engine"),
        # Federated evaluation is a DP release at the clinics (noisy score histograms, charged
        # to their ledgers): these are estimates with their noise, never exact metrics.
        "evaluation": {
            "kind": "differentially private, at the clinics",
            "epsilon_per_evaluation": settings.get("eval_epsilon"),
            "final": evaluated[-1] if evaluated else None,
        },
        "clinics": [{"clinic": clinic_id, **privacy[clinic_id]} for clinic_id in sorted(privacy)],
        "update_checks": update_checks(settings, rounds),
        # Under secure aggregation the coordinator saw each round's mean update only.
        "secure_aggregation": secure_aggregation(settings, rounds),
        "rounds": rounds,
    }
