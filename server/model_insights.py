"""What a saved global model says: risk for a habit profile and the effect of each habit.

Everything here is computed from the model's weights and a reference population that is
synthetic or public; no clinic is asked, so there is no new privacy cost (the model itself
was paid for when it was trained, and post-processing a DP output stays DP).

The reference population is never a private file. Habit effects are exact means of the
model's predictions over the reference patients, and their number is part of the answer:
over a clinic's own file, two answers whose files differ by one patient give that patient's
predicted risk (and the count says the patient is there). So the only built-in reference is
a seeded synthetic population from :mod:`oralfed.schemas.synthetic` (documented in
``docs/data.md``); a file is used only when the operator declares it public (a published
survey extract, say), and every answer says which reference it used and how large it is.

An effect is the model's *average predicted* change when one habit changes and everything
else about each reference patient stays as it is (e.g. brushing 1 → 2 a day). It is
associational, as the model is: it is not a causal estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from oralfed.schemas.contract import PatientRecord
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import Task, encode_features
from oralfed.schemas.importer import ContractError, import_file, validate_row
from oralfed.schemas.model import RiskModel
from oralfed.schemas.synthetic import clinic_profiles, synthesize_clinic

# A middle-of-the-road adult; every field a user does not give in `insights risk` takes this.
DEFAULT_PROFILE: dict[str, Any] = {
    "patient_ref": "profile",
    "age_years": 40,
    "sex": "unknown",
    "smoking_status": "never",
    "brushing_per_day": 2,
    "flossing_days_per_week": 2,
    "sugary_drinks_per_day": 1,
    "sugary_snacks_per_day": 1,
    "fluoride_toothpaste": True,
    "fluoridated_water": "unknown",
    "dental_visits_per_year": 1,
    "diabetes": False,
    "bmi": None,
    "dmft": 0,
    "untreated_caries": False,
    "consent_tier": "statistics",
}
SYNTHETIC_REFERENCE_CLINICS = 3
DEFAULT_REFERENCE_SEED = 7
PUBLIC_DECLARATION = "declared public by the operator"


@dataclass(frozen=True)
class HabitChange:
    """Set ``column`` to ``before`` for everyone, then to ``after``; compare predicted risk."""

    label: str
    column: str
    before: Any
    after: Any


HABIT_CHANGES: tuple[HabitChange, ...] = (
    HabitChange("brushing 1 → 2 a day", "brushing_per_day", 1.0, 2.0),
    HabitChange("flossing 0 → 7 days a week", "flossing_days_per_week", 0, 7),
    HabitChange("sugary drinks 2 → 0 a day", "sugary_drinks_per_day", 2.0, 0.0),
    HabitChange("sugary snacks 3 → 1 a day", "sugary_snacks_per_day", 3.0, 1.0),
    HabitChange("smoking current → never", "smoking_status", "current", "never"),
    HabitChange("fluoride toothpaste no → yes", "fluoride_toothpaste", False, True),
    HabitChange("dental visits 0 → 2 a year", "dental_visits_per_year", 0.0, 2.0),
)


@dataclass(frozen=True)
class HabitEffect:
    """Mean predicted risk before and after a change over the reference population."""

    change: HabitChange
    risk_before: float
    risk_after: float
    difference: float
    standard_error: float  # of the mean difference, over the reference patients

    def to_dict(self) -> dict[str, Any]:
        return {
            "habit": self.change.label,
            "column": self.change.column,
            "before": self.change.before,
            "after": self.change.after,
            "risk_before": self.risk_before,
            "risk_after": self.risk_after,
            "difference": self.difference,
            "standard_error": self.standard_error,
        }


class ProfileError(OralFedError, ValueError):
    """A habit profile outside the contract; the message names the field."""

    exit_code = ExitCode.INVALID_QUERY


def profile_record(values: Mapping[str, Any]) -> PatientRecord:
    """A contract record from the given habits, the rest from :data:`DEFAULT_PROFILE`."""
    fields = {**DEFAULT_PROFILE, **{k: v for k, v in values.items() if v is not None}}
    try:
        return PatientRecord.model_validate(fields)
    except ValidationError as error:
        raise ProfileError(
            "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in error.errors())
        ) from None


def predict_risk(model: RiskModel, records: Sequence[PatientRecord]) -> np.ndarray:
    return model.predict_proba(encode_features(records))


class ReferenceKind(StrEnum):
    SYNTHETIC = "synthetic"
    PUBLIC = "public"


class PrivateReferenceError(OralFedError, ValueError):
    """A reference file the operator has not declared public; nothing was read from it."""

    exit_code = ExitCode.INVALID_QUERY

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path}: not used as a reference population unless it is declared public. "
            "Habit effects are exact means over the reference patients and say how many "
            "there are, so over a private file two answers differing by one patient give "
            "that patient's predicted risk. Use the synthetic reference, or declare the "
            "file public if it is public data (e.g. a published survey extract)."
        )
        self.path = path


@dataclass(frozen=True)
class ReferencePopulation:
    """The patients effects are averaged over, and where they come from (never private)."""

    records: tuple[PatientRecord, ...]
    kind: ReferenceKind
    source: str

    def describe(self) -> dict[str, Any]:
        """What an answer says about its reference; its size is safe to show because the
        population is synthetic or declared public."""
        described: dict[str, Any] = {
            "kind": self.kind.value,
            "source": self.source,
            "patients": len(self.records),
        }
        if self.kind is ReferenceKind.PUBLIC:
            described["declaration"] = PUBLIC_DECLARATION
        return described

    def label(self) -> str:
        """One line for a table title, e.g. '1234 synthetic reference patients (…)'."""
        where = self.source
        if self.kind is ReferenceKind.PUBLIC:
            where += f", {PUBLIC_DECLARATION}"
        return f"{len(self.records)} {self.kind.value} reference patients ({where})"


def refuse_private_reference(path: Path | None, declared_public: bool) -> None:
    """Raise :class:`PrivateReferenceError` for a file without the operator's declaration.

    Separate from loading so a server can refuse at start, before anyone asks.
    """
    if path is not None and not declared_public:
        raise PrivateReferenceError(path)


def reference_population(
    path: Path | None = None,
    *,
    declared_public: bool = False,
    seed: int = DEFAULT_REFERENCE_SEED,
) -> ReferencePopulation:
    """The synthetic reference (``path`` None), or a contract file declared public.

    A declared-public file contributes its statistics- and research-tier rows, as a clinic
    file would: the declaration is the operator's, the consent tiers still stand.
    """
    refuse_private_reference(path, declared_public)
    if path is not None:
        result = import_file(path)
        records = tuple(r for r in result.accepted if r.consent_tier.allows_statistics)
        if not records:
            raise ContractError(
                f"{path}: no accepted statistics- or research-tier rows to use as a reference"
            )
        return ReferencePopulation(records, ReferenceKind.PUBLIC, str(path))
    synthetic = []
    for profile in clinic_profiles(SYNTHETIC_REFERENCE_CLINICS, seed):
        for row in synthesize_clinic(profile, seed):
            record, _ = validate_row(row)
            if record is not None:
                synthetic.append(record)
    return ReferencePopulation(
        tuple(synthetic),
        ReferenceKind.SYNTHETIC,
        f"oralfed.schemas.synthetic: {SYNTHETIC_REFERENCE_CLINICS} clinics, seed {seed}",
    )


def habit_effects(
    model: RiskModel,
    population: Sequence[PatientRecord],
    changes: Sequence[HabitChange] = HABIT_CHANGES,
) -> list[HabitEffect]:
    """The model's average predicted risk change for each habit change."""
    effects = []
    for change in changes:
        before = predict_risk(model, [_with(r, change.column, change.before) for r in population])
        after = predict_risk(model, [_with(r, change.column, change.after) for r in population])
        differences = after - before
        effects.append(
            HabitEffect(
                change=change,
                risk_before=float(before.mean()),
                risk_after=float(after.mean()),
                difference=float(differences.mean()),
                standard_error=float(differences.std(ddof=1) / math.sqrt(len(differences)))
                if len(differences) > 1
                else 0.0,
            )
        )
    return effects


def plot_effects(effects: Sequence[HabitEffect], task: Task, destination: Path) -> Path:
    """A horizontal bar chart of the risk differences (percentage points), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [e.change.label for e in effects]
    values = [100 * e.difference for e in effects]
    errors = [100 * 1.96 * e.standard_error for e in effects]
    figure, axes = pyplot.subplots(figsize=(8, 0.5 * len(effects) + 1.5))
    colours = ["tab:green" if v < 0 else "tab:red" for v in values]
    axes.barh(labels, values, xerr=errors, color=colours)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.invert_yaxis()
    axes.set_xlabel(f"change in predicted {task.value.replace('_', ' ')} risk (percentage points)")
    axes.set_title("Average effect of each habit change (model prediction)")
    figure.tight_layout()
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=120)
    pyplot.close(figure)
    return destination


def _with(record: PatientRecord, column: str, value: Any) -> PatientRecord:
    return record.model_copy(update={column: type(getattr(record, column))(value)})
