"""The budget chart: cumulative ε of each data set over time, against the cap in force.

The tables give the figures; the chart shows a privacy officer how close each data set came
to its cap and when a cap was changed. It is drawn on a bare matplotlib ``Figure``, never
through pyplot: no display backend is needed on a clinic server and no global plotting
state is touched. matplotlib is imported only when a chart is drawn, because every
``oralfed`` command imports the privacy layer.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from oralfed.privacy.budget_report import DatasetBudgetReport
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_bytes_atomically

__all__ = ["BudgetPlotError", "plot_budgets"]

# Head room above the highest ε or cap, so neither line runs along the frame.
_HEADROOM = 1.15


class BudgetPlotError(OralFedError):
    """The chart cannot be written where it was asked for; the message names the file."""

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE


def _drawn(epsilon: float, top: float) -> float:
    """Where a point is drawn: its ε, or the top edge for an ε with no finite bound."""
    return epsilon if math.isfinite(epsilon) else top


def plot_budgets(reports: Sequence[DatasetBudgetReport], path: Path) -> None:
    """Write the chart of ``reports`` to ``path`` as a PNG (whatever its suffix), atomically.

    Each report draws its ``points``, so build the reports ``by_round``.
    """
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    finite = [
        value
        for report in reports
        for point in report.points
        for value in (point.epsilon, point.epsilon_cap)
        if math.isfinite(value)
    ]
    top = max(finite, default=1.0) * _HEADROOM
    for report in reports:
        # The datetimes as an object array: matplotlib's date converter reads it as it reads
        # the list, and its stubs type the x values as array-like (which a list of
        # datetimes is not).
        times = np.array([point.recorded_at for point in report.points], dtype=object)
        (line,) = axes.step(
            times,
            [_drawn(point.epsilon, top) for point in report.points],
            where="post",
            marker="o",
            label=f"{report.dataset_id}: ε spent ({report.accountant}, δ={report.delta:g})",
        )
        axes.step(
            times,
            [point.epsilon_cap for point in report.points],
            where="post",
            linestyle="--",
            color=line.get_color(),
            label=f"{report.dataset_id}: cap",
        )
    if len(finite) < sum(2 * len(report.points) for report in reports):
        axes.set_title("ε with no finite bound is drawn at the top edge", loc="right", fontsize=8)
    axes.set_ylim(0, top)
    axes.set_xlabel("time of charge (UTC)")
    axes.set_ylabel("ε")
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title("Privacy budget spent over time")
    figure.autofmt_xdate()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    try:
        write_bytes_atomically(path, image.getvalue())
    except OSError as error:
        raise BudgetPlotError(
            f"{path}: cannot write the budget chart ({error.strerror or error})"
        ) from None
