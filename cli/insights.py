"""``oralfed insights``: DP aggregate queries across clinics, model insights, the HTTP API."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.federate import _clinic_files
from cli.output import UserError, console, print_json
from client.model import load_model
from client.node import DEFAULT_EPSILON_CAP, ClinicNode
from schemas.contract import FluoridatedWater, Sex, SmokingStatus
from schemas.query import (
    DEFAULT_MAX_CELLS,
    DEFAULT_QUERY_DELTA,
    Measure,
    Mechanism,
    QueryError,
    QuerySpec,
    parse_query,
)
from schemas.synthetic import write_federation
from server.coordinator_db import CoordinatorStore
from server.insights import (
    CMS_CELL_FLOOR,
    InsightError,
    QuerySettings,
    SuppressionPolicy,
    answer_in_process,
)
from server.launch import DeployedQueryError, launch_query
from server.model_insights import (
    ProfileError,
    habit_effects,
    plot_effects,
    predict_risk,
    profile_record,
    reference_population,
)
from server.simulation import QUERY_APP, launch_simulation

app = typer.Typer(help="Ask the clinics for DP statistics; read insights from a model.")
token_app = typer.Typer(help="API tokens for researchers (stored hashed, each with an ε cap).")
app.add_typer(token_app, name="token")

DEFAULT_COORDINATOR_DB = Path(".oralfed/coordinator.db")
# query / policy field → `insights query` option
QUERY_OPTIONS: dict[str, str] = {
    "measure": "--measure",
    "column": "--column",
    "value": "--value",
    "group_by": "--group-by",
    "epsilon": "--epsilon",
    "delta": "--delta",
    "mechanism": "--mechanism",
    "bins": "--bins",
    "quantiles": "--quantile",
    "max_cells": "--max-cells",
}
# `insights risk` option → contract column
PROFILE_OPTIONS: dict[str, str] = {
    "age": "age_years",
    "sex": "sex",
    "smoking": "smoking_status",
    "brushing": "brushing_per_day",
    "flossing": "flossing_days_per_week",
    "sugary_drinks": "sugary_drinks_per_day",
    "sugary_snacks": "sugary_snacks_per_day",
    "fluoride_toothpaste": "fluoride_toothpaste",
    "fluoridated_water": "fluoridated_water",
    "dental_visits": "dental_visits_per_year",
    "diabetes": "diabetes",
    "bmi": "bmi",
}
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
        ".oralfed/state with --data."
    ),
]


def _clinic_nodes(
    clinics: int, data: Path | None, state_dir: Path | None, out: Path, seed: int
) -> list[ClinicNode]:
    """The clinics to ask: the files in ``data``, or freshly synthesized ones in ``out``."""
    if data is not None:
        files = _clinic_files(data)
    else:
        files = write_federation(out / "data", clinics, seed)
        console.print(f"Synthesized {len(files)} clinics in {out / 'data'} (seed {seed})")
    root = (state_dir or (out / "state" if data is None else Path(".oralfed/state"))).resolve()
    return [
        ClinicNode(
            clinic_id=path.stem,
            data_path=path.resolve(),
            state_dir=root / path.stem,
            dataset_id=path.stem,
            epsilon_cap=DEFAULT_EPSILON_CAP,
        )
        for path in files
    ]


@app.command()
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
        list[float] | None, typer.Option("--quantile", help="Quantile(s) to report (0..1).")
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
        bool, typer.Option(help="Allow floors below the defaults (11 and 10).")
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
    seed: Annotated[int, typer.Option(help="Seed for synthetic clinics.")] = 7,
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
    raw: dict[str, Any] = {
        "measure": measure.value,
        "column": column,
        "value": value,
        "group_by": group_by or [],
        "epsilon": epsilon,
        "delta": delta,
        "mechanism": mechanism.value,
        "bins": bins,
        "max_cells": max_cells,
    }
    if quantile:
        raw["quantiles"] = quantile
    try:
        spec = parse_query(raw)
        policy = SuppressionPolicy(cell_floor, clinic_min_records, allow_small_floors)
    except (QueryError, InsightError) as error:
        raise UserError(_option_names(str(error))) from None
    out = (out or Path("runs") / datetime.now(UTC).strftime("insights-%Y%m%dT%H%M%SZ")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if federation_dir is not None:
        _query_deployment(federation_dir, spec, policy, out, coordinator_db, as_json)
        return
    nodes = _clinic_nodes(clinics, data, state_dir, out, seed)
    database = (coordinator_db or out / "coordinator.db").resolve()
    settings = QuerySettings(
        query=spec.model_dump(mode="json"),
        cell_floor=policy.cell_floor,
        clinic_min_records=policy.clinic_min_records,
        allow_below_defaults=policy.allow_below_defaults,
        coordinator_db=f"sqlite:///{database}",
        expected_clinics=len(nodes),
    )
    answers: list[dict[str, Any]] = []
    with console.status(f"Asking {len(nodes)} clinic(s): {spec.describe()} ..."):
        result = launch_simulation(
            nodes,
            settings.public_dict(),
            out,
            lambda event: (
                answers.append(event["answer"]) if event.get("event") == "answer" else None
            ),
            app=QUERY_APP,
        )
    if not answers:
        raise UserError(f"the query did not complete: {result.message}")
    if as_json:
        print_json(answers[0])
    else:
        render_answer(answers[0])
        console.print(f"\nRecorded in {database}; simulation log in {out / 'federation.log'}")


def _query_deployment(
    federation_dir: Path,
    spec: QuerySpec,
    policy: SuppressionPolicy,
    out: Path,
    coordinator_db: Path | None,
    as_json: bool,
) -> None:
    """The same query through the deployed coordinator (``flwr run`` on its SuperLink)."""
    settings = QuerySettings(
        query=spec.model_dump(mode="json"),
        cell_floor=policy.cell_floor,
        clinic_min_records=policy.clinic_min_records,
        allow_below_defaults=policy.allow_below_defaults,
        coordinator_db=f"sqlite:///{coordinator_db.resolve()}" if coordinator_db else None,
        out_dir=str(out),
    )
    with console.status(f"Asking the deployed clinics: {spec.describe()} ..."):
        try:
            answer = launch_query(federation_dir, settings, lambda _line: None)
        except DeployedQueryError as error:
            raise UserError(f"the query did not complete: {error}") from None
    if as_json:
        print_json(answer)
    else:
        render_answer(answer)


def render_answer(answer: dict[str, Any]) -> None:
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
                label + _fmt(estimate and estimate["value"]),
                _fmt(estimate and estimate["standard_error"]),
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
        console.print(f"  [yellow]{refusal['clinic']}: refused[/]: {refusal['reason']}")


def _estimates(
    cell: dict[str, Any], edges: list[float] | None
) -> list[tuple[str, dict[str, float] | None]]:
    if cell.get("bins") is not None and edges is not None:
        return [
            (f"[{edges[i]:g}, {edges[i + 1]:g}): ", estimate)
            for i, estimate in enumerate(cell["bins"])
        ]
    if cell.get("quantiles") is not None:
        return [(f"q{q}: ", estimate) for q, estimate in cell["quantiles"].items()]
    return [("", cell["value"])]


@app.command()
def risk(
    model: Annotated[Path, typer.Option(help="A global model file (global_model.pt).")],
    age: Annotated[int | None, typer.Option(help="Age in years.")] = None,
    sex: Annotated[Sex | None, typer.Option()] = None,
    smoking: Annotated[SmokingStatus | None, typer.Option()] = None,
    brushing: Annotated[float | None, typer.Option(help="Brushing sessions a day.")] = None,
    flossing: Annotated[int | None, typer.Option(help="Flossing days a week.")] = None,
    sugary_drinks: Annotated[float | None, typer.Option(help="Servings a day.")] = None,
    sugary_snacks: Annotated[float | None, typer.Option(help="Snacks a day.")] = None,
    fluoride_toothpaste: Annotated[bool | None, typer.Option()] = None,
    fluoridated_water: Annotated[FluoridatedWater | None, typer.Option()] = None,
    dental_visits: Annotated[float | None, typer.Option(help="Check-ups a year.")] = None,
    diabetes: Annotated[bool | None, typer.Option()] = None,
    bmi: Annotated[float | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Predicted risk for one habit profile (unset habits take typical values); no privacy cost."""
    loaded, task, _ = load_model(model)
    given = {
        "age": age,
        "sex": sex,
        "smoking": smoking,
        "brushing": brushing,
        "flossing": flossing,
        "sugary_drinks": sugary_drinks,
        "sugary_snacks": sugary_snacks,
        "fluoride_toothpaste": fluoride_toothpaste,
        "fluoridated_water": fluoridated_water,
        "dental_visits": dental_visits,
        "diabetes": diabetes,
        "bmi": bmi,
    }
    try:
        record = profile_record({PROFILE_OPTIONS[name]: v for name, v in given.items()})
    except ProfileError as error:
        message = str(error)
        for option, column in PROFILE_OPTIONS.items():
            message = message.replace(f"{column}:", f"--{option.replace('_', '-')}:")
        raise UserError(message) from None
    probability = float(predict_risk(loaded, [record])[0])
    profile = record.model_dump(mode="json", include=set(PROFILE_OPTIONS.values()))
    if as_json:
        print_json({"task": task.value, "risk": probability, "profile": profile})
        return
    table = Table(title=f"Predicted {task.value.replace('_', ' ')} risk: {probability:.1%}")
    table.add_column("habit")
    table.add_column("value")
    for name, item in profile.items():
        table.add_row(name, str(item))
    console.print(table)


@app.command()
def effects(
    model: Annotated[Path, typer.Option(help="A global model file (global_model.pt).")],
    reference: Annotated[
        Path | None,
        typer.Option(help="Contract file of reference patients (default: synthetic ones)."),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic reference.")] = 7,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Average change in predicted risk for each habit change, over a reference population."""
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot {plot}: the chart is a PNG; give a file name ending in .png")
    loaded, task, _ = load_model(model)
    population = reference_population(reference, seed)
    results = habit_effects(loaded, population)
    if plot is not None:
        plot_effects(results, task, plot)
    if as_json:
        print_json(
            {
                "task": task.value,
                "reference_patients": len(population),
                "effects": [e.to_dict() for e in results],
                "plot": str(plot) if plot else None,
            }
        )
        return
    table = Table(
        title=f"Effect on predicted {task.value.replace('_', ' ')} risk, averaged over "
        f"{len(population)} reference patients"
    )
    for name in ("habit change", "risk before", "risk after", "difference", "SE"):
        table.add_column(name, justify="right" if name != "habit change" else "left")
    for effect in results:
        table.add_row(
            effect.change.label,
            f"{effect.risk_before:.1%}",
            f"{effect.risk_after:.1%}",
            f"{100 * effect.difference:+.2f} pp",
            f"{100 * effect.standard_error:.2f} pp",
        )
    console.print(table)
    if plot is not None:
        console.print(f"Chart: {plot}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who the token is for.")],
    epsilon_cap: Annotated[float, typer.Option(help="Total query ε this token may ask for.")],
    coordinator_db: Annotated[Path, typer.Option(help="Coordinator database.")] = (
        DEFAULT_COORDINATOR_DB
    ),
) -> None:
    """Create an API token; it is shown once and stored only as a salted hash."""
    from server.insights_api import TokenError, create_token

    store = CoordinatorStore.sqlite_file(coordinator_db)
    try:
        token = create_token(store, name, epsilon_cap)
    except TokenError as error:
        raise UserError(str(error)) from None
    finally:
        store.close()
    console.print(f"Token for {name} (ε cap {epsilon_cap:g}); it is not stored, keep it now:")
    print(token)


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    clinics: ClinicsOption = 3,
    data: DataOption = None,
    state_dir: StateOption = None,
    out: Annotated[
        Path, typer.Option(help="Folder for synthetic clinics and the request log.")
    ] = Path(".oralfed/insights"),
    model: Annotated[Path | None, typer.Option(help="Model for /v1/risk, /v1/effects.")] = None,
    reference: Annotated[Path | None, typer.Option(help="Reference file for effects.")] = None,
    coordinator_db: Annotated[Path, typer.Option(help="Coordinator database (tokens).")] = (
        DEFAULT_COORDINATOR_DB
    ),
    max_cells: Annotated[int, typer.Option(help="Most cells a query may make.")] = (
        DEFAULT_MAX_CELLS
    ),
    seed: Annotated[int, typer.Option(help="Seed for synthetic clinics.")] = 7,
) -> None:
    """Serve the insights HTTP API; queries run the clinics' code for clinics on this host."""
    import uvicorn

    from server.insights_api import create_app

    out.mkdir(parents=True, exist_ok=True)
    nodes = _clinic_nodes(clinics, data, state_dir, out, seed)
    handler = logging.FileHandler(out / "insights-api.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("oralfed.insights.api").addHandler(handler)
    logging.getLogger("oralfed.insights.api").setLevel(logging.INFO)
    database = f"sqlite:///{coordinator_db.resolve()}"
    store = CoordinatorStore.sqlite_file(coordinator_db)
    api = create_app(
        store,
        lambda spec, policy, requester: answer_in_process(nodes, spec, policy, requester),
        database,
        max_cells=max_cells,
        model_path=model,
        reference=reference,
    )
    console.print(
        f"Insights API on http://{host}:{port} (OpenAPI: /docs); log {handler.baseFilename}"
    )
    uvicorn.run(api, host=host, port=port, log_level="warning")


def _option_names(message: str) -> str:
    """Field names in a query or policy error as the CLI options the user typed."""
    message = message.replace("allow_below_defaults", "--allow-small-floors")
    return re.sub(
        r"\b(" + "|".join(QUERY_OPTIONS) + r"):", lambda m: QUERY_OPTIONS[m.group(1)] + ":", message
    )


def _fmt(value: float | None) -> str:
    """Four significant digits: counts, proportions and means read alike."""
    return "-" if value is None else f"{value:.4g}"
