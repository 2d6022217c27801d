"""The dashboard's charts, drawn by matplotlib on the server as SVG images.

A chart is an image the page links to (``<img>``, served by the app itself): no script runs
in the browser, so the pages' Content-Security-Policy allows none, and nothing is fetched
from outside the machine. Drawn on a bare ``Figure``, never through pyplot, so requests
served in parallel share no plotting state. Every chart shows the figures' uncertainty where
they have one (the noisy evaluation's and the answers' 95 % intervals) and the budget's δ and
accountant beside its ε.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from oralfed.privacy.budget_report import DatasetBudgetReport
from oralfed.privacy.ledger import ChargeRecord

__all__ = ["answer_chart", "auc_chart", "budget_chart"]

_HEADROOM = 1.15


def budget_chart(report: DatasetBudgetReport, charges: Sequence[ChargeRecord]) -> bytes:
    """ε of the data set's history after each charge (its receipt) over time, against the cap
    in force, with the current recomputation as the last point's label."""
    figure = Figure(figsize=(8, 3.6))
    axes = figure.subplots()
    epsilons = [c.epsilon_after for c in charges]
    finite = [e for e in [*epsilons, report.epsilon_cap] if math.isfinite(e)]
    top = max(finite, default=1.0) * _HEADROOM
    if charges:
        times = np.array([c.recorded_at for c in charges], dtype=object)
        axes.step(
            times,
            [e if math.isfinite(e) else top for e in epsilons],
            where="post",
            marker="o" if len(charges) <= 200 else None,
            label=f"ε spent ({report.accountant}, δ={report.delta:g})",
        )
    axes.axhline(report.epsilon_cap, linestyle="--", color="tab:red", label="cap")
    axes.set_ylim(0, top)
    axes.set_xlabel("time of charge (UTC)")
    axes.set_ylabel("ε")
    axes.set_title(
        f"{report.dataset_id}: ε {report.spent:.3g} of {report.epsilon_cap:g} "
        f"(δ={report.delta:g}, {report.accountant})",
        fontsize=10,
    )
    axes.legend(loc="upper left", fontsize=8)
    figure.autofmt_xdate()
    return _svg(figure)


def auc_chart(rounds: Sequence[dict[str, Any]]) -> bytes:
    """The noisy evaluation's AUC per round with its 95 % interval (rounds without one are
    left out: no evaluation was released)."""
    figure = Figure(figsize=(8, 3.2))
    axes = figure.subplots()
    points = [
        (int(r["round"]), float(r["eval_auc"]), (r.get("evaluation") or {}).get("auc_95"))
        for r in rounds
        if r.get("eval_auc") is not None
    ]
    if points:
        numbers = [p[0] for p in points]
        aucs = [p[1] for p in points]
        low = [a - (p[2][0] if p[2] else a) for a, p in zip(aucs, points, strict=True)]
        high = [(p[2][1] if p[2] else a) - a for a, p in zip(aucs, points, strict=True)]
        axes.errorbar(numbers, aucs, yerr=[low, high], marker="o", capsize=3, label="AUC (DP)")
        axes.set_xticks(numbers)
    axes.set_ylim(0, 1)
    axes.set_xlabel("round")
    axes.set_ylabel("AUC")
    axes.set_title("Noisy evaluation: AUC per round with its 95 % interval", fontsize=10)
    return _svg(figure)


def answer_chart(answer: dict[str, Any]) -> bytes:
    """Each cell's noisy value with its 95 % interval; suppressed cells are marked, never
    drawn as zero."""
    cells = answer.get("cells", [])
    figure = Figure(figsize=(8, max(2.4, 0.35 * len(cells) + 1.2)))
    axes = figure.subplots()
    for position, cell in enumerate(cells):
        label = ", ".join(f"{k}={v}" for k, v in (cell.get("group") or {}).items()) or "all"
        estimate = cell.get("value") or cell.get("count")
        if cell.get("suppressed") or not estimate:
            axes.annotate("suppressed", (0, position), fontsize=8, color="grey")
        else:
            value = float(estimate["value"])
            axes.errorbar(
                [value],
                [position],
                xerr=[[value - float(estimate["low"])], [float(estimate["high"]) - value]],
                marker="o",
                capsize=3,
                color="tab:blue",
            )
        axes.text(0, position + 0.3, label, fontsize=7)
    axes.set_yticks([])
    axes.set_ylim(-0.5, max(len(cells), 1) - 0.2)
    axes.set_title(str(answer.get("description", "answer")), fontsize=9)
    axes.set_xlabel("noisy value with 95 % interval")
    return _svg(figure)


def _svg(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()
