"""``oralfed insights risk`` and ``effects``: what a saved global model says (no privacy cost).

The computing is :mod:`oralfed.server.model_insights`, shared with the HTTP API; these
commands load the model, call it and render. A profile is refused with the contract column
it breaks (``age_years: …``), the word the API uses too; each option's help names its column.
Effects are averaged over synthetic patients, or over a file only with
``--reference-is-public`` (a private file would give away its patients' predicted risks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from oralfed.cli.output import UserError, console, print_json
from oralfed.schemas.contract import FluoridatedWater, Sex, SmokingStatus
from oralfed.schemas.model import load_model
from oralfed.server.model_insights import (
    DEFAULT_REFERENCE_SEED,
    PrivateReferenceError,
    habit_effects,
    plot_effects,
    predict_risk,
    profile_record,
    reference_population,
)

__all__ = ["ReferenceIsPublicOption", "ReferenceOption", "effects", "private_reference", "risk"]

ModelOption = Annotated[Path, typer.Option(help="A global model file (global_model.pt).")]
ReferenceOption = Annotated[
    Path | None,
    typer.Option(
        help="Contract file of reference patients; only with --reference-is-public "
        "(default: synthetic patients)."
    ),
]
ReferenceIsPublicOption = Annotated[
    bool,
    typer.Option(
        "--reference-is-public",
        help="Declare the --reference file public data (never a clinic's own patients); "
        "answers record the declaration.",
    ),
]


def private_reference(error: PrivateReferenceError) -> UserError:
    """The library's refusal in the command line's words: which flag declares a file."""
    return UserError(f"--reference {error} Declare it with --reference-is-public.")


def risk(
    model: ModelOption,
    age: Annotated[int | None, typer.Option(help="Age in years (age_years).")] = None,
    sex: Annotated[Sex | None, typer.Option()] = None,
    smoking: Annotated[SmokingStatus | None, typer.Option(help="Smoking (smoking_status).")] = None,
    brushing: Annotated[
        float | None, typer.Option(help="Brushing sessions a day (brushing_per_day).")
    ] = None,
    flossing: Annotated[
        int | None, typer.Option(help="Flossing days a week (flossing_days_per_week).")
    ] = None,
    sugary_drinks: Annotated[
        float | None, typer.Option(help="Servings a day (sugary_drinks_per_day).")
    ] = None,
    sugary_snacks: Annotated[
        float | None, typer.Option(help="Snacks a day (sugary_snacks_per_day).")
    ] = None,
    fluoride_toothpaste: Annotated[bool | None, typer.Option()] = None,
    fluoridated_water: Annotated[FluoridatedWater | None, typer.Option()] = None,
    dental_visits: Annotated[
        float | None, typer.Option(help="Check-ups a year (dental_visits_per_year).")
    ] = None,
    diabetes: Annotated[bool | None, typer.Option()] = None,
    bmi: Annotated[float | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Predicted risk for one habit profile (unset habits take typical values); no privacy cost."""
    loaded, task, _ = load_model(model)
    habits = {
        "age_years": age,
        "sex": sex,
        "smoking_status": smoking,
        "brushing_per_day": brushing,
        "flossing_days_per_week": flossing,
        "sugary_drinks_per_day": sugary_drinks,
        "sugary_snacks_per_day": sugary_snacks,
        "fluoride_toothpaste": fluoride_toothpaste,
        "fluoridated_water": fluoridated_water,
        "dental_visits_per_year": dental_visits,
        "diabetes": diabetes,
        "bmi": bmi,
    }
    record = profile_record(habits)
    probability = float(predict_risk(loaded, [record])[0])
    profile = record.model_dump(mode="json", include=set(habits))
    if as_json:
        print_json({"task": task.value, "risk": probability, "profile": profile})
        return
    table = Table(title=f"Predicted {task.value.replace('_', ' ')} risk: {probability:.1%}")
    table.add_column("habit")
    table.add_column("value")
    for name, item in profile.items():
        table.add_row(name, str(item))
    console.print(table)


def effects(
    model: ModelOption,
    reference: ReferenceOption = None,
    reference_is_public: ReferenceIsPublicOption = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart here.")] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the synthetic reference.")
    ] = DEFAULT_REFERENCE_SEED,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Average change in predicted risk for each habit change, over a synthetic or public
    reference population."""
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot {plot}: the chart is a PNG; give a file name ending in .png")
    try:
        population = reference_population(reference, declared_public=reference_is_public, seed=seed)
    except PrivateReferenceError as error:
        raise private_reference(error) from None
    loaded, task, _ = load_model(model)
    results = habit_effects(loaded, population.records)
    if plot is not None:
        plot_effects(results, task, plot)
    if as_json:
        print_json(
            {
                "task": task.value,
                "reference": population.describe(),
                "effects": [e.to_dict() for e in results],
                "plot": str(plot) if plot else None,
            }
        )
        return
    table = Table(
        title=f"Effect on predicted {task.value.replace('_', ' ')} risk, averaged over "
        f"{population.label()}"
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
