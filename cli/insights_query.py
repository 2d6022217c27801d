"""``oralfed insights query``: one DP aggregate over simulated clinics or a deployment.

The command only turns its options into a query (the fields of the API's JSON body, so a
refusal names the same ``column``, ``group_by`` … a researcher writes in the API) and the
suppression floors, calls :mod:`oralfed.deploy.insight_queries`, and renders the answer.
The clinic options are shared with ``insights serve``, which asks the same kind of clinics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from oralfed.cli.output import console, print_json
from oralfed.deploy.clinic_sources import ClinicSource
from oralfed.deploy.insight_queries import run_deployed_query, run_simulated_query
from oralfed.schemas.query import (
    DEFAULT_MAX_CELLS,
    DEFAULT_QUERY_DELTA,
    Measure,
    Mechanism,
    parse_query,
)
from oralfed.server.insights import CMS_CELL_FLOOR, SuppressionPolicy

__all__ = ["ClinicsOption", "DataOption", "SeedOption", "StateOption", "query"]

ClinicsOption = Annotated[
    int, typer.Option(min=1, max=50, help="Synthetic clinics to create (ignored with --data).")
]
DataOption = Annotated[
    Path | None, typer.Option(help="Folder of clinic files, one per clinic (as for federate).")
]
StateOption = Annotated[
    Path | None,
    typer.Option(
        help="Clinic state (ledgers). Default: <out>/state for synthetic clinics, "
        "<state root>/clinics with --data (ORALFED_HOME, default ~/.oralfed)."
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed for synthetic clinics.")]


def query(
    measure: Annotated[Measure, typer.Option(help="What to compute.")],
    epsilon: Annotated[float, typer.Option(help="ε each clinic spends on this query.")],
    column: Annotated[str | None, typer.Option(help="Contract column measured.")] = None,
    value: Annotated[
        str | None, typer.Option(help="For a proportion of a category: the level counted.")
    ] = None,
    group_by: Annotated[
        list[str] | None,
        typer.Option("--group-by", help="Category column or age_band; repeatable."),
    ] = None,
    delta: Annotated[float, typer.Option(help="δ of this query.")] = DEFAULT_QUERY_DELTA,
    mechanism: Annotated[Mechanism, typer.Option(help="Noise distribution.")] = (
        Mechanism.GAUSSIAN
    ),
    bins: Annotated[int | None, typer.Option(help="Histogram/quantile bins.")] = None,
    quantile: Annotated[
        list[float] | None,
        typer.Option("--quantile", help="Quantile(s) to report (0..1); repeatable (quantiles)."),
    ] = None,
    max_cells: Annotated[int, typer.Option(help="Most cells a group-by may make.")] = (
        DEFAULT_MAX_CELLS
    ),
    cell_floor: Annotated[
        int, typer.Option(help="Suppress cells with a noisy count below this.")
    ] = CMS_CELL_FLOOR,
    clinic_min_records: Annotated[
        int, typer.Option(help="A clinic with fewer records in a cell adds nothing to it.")
    ] = 10,
    allow_small_floors: Annotated[
        bool,
        typer.Option(
            help="Allow floors below the defaults (11 and 10); the policy's allow_below_defaults."
        ),
    ] = False,
    clinics: ClinicsOption = 3,
    data: DataOption = None,
    state_dir: StateOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Query folder (default runs/insights-<UTC time>).")
    ] = None,
    coordinator_db: Annotated[
        Path | None, typer.Option(help="Coordinator database (default <out>/coordinator.db).")
    ] = None,
    seed: SeedOption = 7,
    federation_dir: Annotated[
        Path | None,
        typer.Option(
            help="Ask the clinic nodes of this deployed federation (its coordinator must be "
            "running) instead of simulated clinics."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Ask every clinic (simulated, or a deployed federation) for a DP aggregate."""
    spec = parse_query(
        {
            "measure": measure,
            "column": column,
            "value": value,
            "group_by": group_by or [],
            "epsilon": epsilon,
            "delta": delta,
            "mechanism": mechanism,
            "bins": bins,
            "max_cells": max_cells,
            **({"quantiles": quantile} if quantile else {}),
        }
    )
    policy = SuppressionPolicy(cell_floor, clinic_min_records, allow_small_floors)
    footer: str | None = None
    with console.status(f"Asking the clinics: {spec.describe()} ..."):
        if federation_dir is not None:
            answer = run_deployed_query(federation_dir, spec, policy, out, coordinator_db)
        else:
            clinic_set = ClinicSource(clinics, data, state_dir, seed)
            run = run_simulated_query(
                spec, policy, clinic_set, out, coordinator_db, notify=console.print
            )
            answer = run.answer
            footer = f"\nRecorded in {run.coordinator_db}; simulation log in {run.log_file}"
    if as_json:
        print_json(answer)
        return
    _render_answer(answer)
    if footer:
        console.print(footer)


def _render_answer(answer: dict[str, Any]) -> None:
    """The answer as tables: one row per cell, then who took part and who refused."""
    spec = answer["query"]
    table = Table(title=answer["description"])
    for name in spec["group_by"]:
        table.add_column(name)
    for name in ("answer", "SE", "95% interval", "noisy count", "clinics"):
        table.add_column(name, justify="right")
    for cell in answer["cells"]:
        groups = [cell["group"][name] for name in spec["group_by"]]
        if cell["suppressed"]:
            table.add_row(*groups, "suppressed", "", "", "< floor", str(len(cell["clinics"])))
            continue
        for label, estimate in _estimates(cell, answer.get("bin_edges")):
            table.add_row(
                *groups,
                label + _fmt(estimate["value"] if estimate else None),
                _fmt(estimate["standard_error"] if estimate else None),
                f"{_fmt(estimate['low'])} .. {_fmt(estimate['high'])}" if estimate else "",
                _fmt(cell["count"]["value"]),
                str(len(cell["clinics"])),
            )
    console.print(table)
    privacy = answer["privacy"]
    console.print(
        f"Privacy: ε={privacy['epsilon']:g}, δ={privacy['delta']:g} ({privacy['mechanism']}) "
        f"charged by each taking clinic; {answer['error_model']}."
    )
    for clinic in answer["participants"]:
        console.print(
            f"  {clinic['clinic']}: took part; ε spent {clinic['epsilon_spent']:.3f} of "
            f"{clinic['epsilon_cap']:g} (δ={clinic['delta']:g}, {clinic['accountant']})"
        )
    for refusal in answer["refusals"]:
        charged = " (charged all the same)" if refusal.get("charged") else ""
        console.print(f"  [yellow]{refusal['clinic']}: refused{charged}[/]: {refusal['reason']}")


def _estimates(
    cell: dict[str, Any], edges: list[float] | None
) -> list[tuple[str, dict[str, float] | None]]:
    """A cell's rows: one per histogram bin or quantile, else its single value."""
    if cell.get("bins") is not None and edges is not None:
        return [
            (f"[{edges[i]:g}, {edges[i + 1]:g}): ", estimate)
            for i, estimate in enumerate(cell["bins"])
        ]
    if cell.get("quantiles") is not None:
        return [(f"q{q}: ", estimate) for q, estimate in cell["quantiles"].items()]
    return [("", cell["value"])]


def _fmt(value: float | None) -> str:
    """Four significant digits: counts, proportions and means read alike."""
    return "-" if value is None else f"{value:.4g}"
