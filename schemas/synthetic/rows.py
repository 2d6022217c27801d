"""One clinic's clean rows: a cohort and its outcomes written as contract CSV cells.

Cells follow the contract's syntax exactly (``.`` decimal mark, ``true``/``false``, empty
cell = missing), with the missingness a real export has (BMI, visit dates, unknown water
status written empty), so the importer is exercised on realistic files. Faults are added
afterwards, by :mod:`oralfed.schemas.synthetic.faults`, on their own random stream.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Final

import numpy as np

from oralfed.schemas.synthetic.cohort import sample_cohort
from oralfed.schemas.synthetic.outcomes import sample_outcomes
from oralfed.schemas.synthetic.profiles import ClinicProfile
from oralfed.schemas.synthetic.streams import clinic_streams
from oralfed.schemas.synthetic.vocabulary import (
    CONSENT_TIERS,
    PERIODONTITIS_STAGES,
    SEXES,
    SMOKING_STATUSES,
    WATER_STATUSES,
)

__all__ = ["REFERENCE_DATE", "clean_rows"]

#: Fixed "today" of the synthetic world. Never ``date.today()``: output must not depend on
#: when it is generated. It lies in the past, so no clean ``last_visit_date`` is ever in the
#: future for an importer that checks against the real date.
REFERENCE_DATE: Final[date] = date(2026, 6, 30)
_VISIT_WINDOW_DAYS: Final[int] = 3 * 365  # last visits fall within three years of it
_BMI_MISSING: Final[float] = 0.10
_VISIT_DATE_MISSING: Final[float] = 0.05


def _ref_prefix(clinic_id: str) -> str:
    """'clinic-03' -> 'c03': refs stay short and still say which clinic they came from."""
    match = re.fullmatch(r"clinic-(\d+)", clinic_id)
    return f"c{int(match.group(1)):02d}" if match else clinic_id


def _number(value: float) -> str:
    """Contract numbers: '.' decimal mark, no needless '.0' on whole values."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _bool_cell(value: bool) -> str:
    """The contract's canonical boolean words (an importer also accepts yes/no, 1/0)."""
    return "true" if value else "false"


def clean_rows(profile: ClinicProfile, seed: int) -> list[dict[str, str]]:
    """The clinic's rows as CSV cells keyed by the contract columns, every one valid."""
    streams = clinic_streams(profile.clinic_id, seed)
    cohort = sample_cohort(profile, np.random.default_rng(streams.features))
    caries, dmft, stage = sample_outcomes(cohort, np.random.default_rng(streams.outcomes))

    rng = np.random.default_rng(streams.cells)
    n = profile.n_patients
    numbers = rng.choice(999_999, size=n, replace=False) + 1
    prefix = _ref_prefix(profile.clinic_id)
    bmi_missing = rng.random(n) < _BMI_MISSING
    # Frequent attenders were seen recently; people with no check-up last year 1-3 years ago.
    recent = rng.exponential(365.0 / (cohort.visits + 0.5))
    lapsed = rng.uniform(365.0, _VISIT_WINDOW_DAYS, n)
    days_ago = np.where(cohort.visits >= 1, np.minimum(recent, _VISIT_WINDOW_DAYS), lapsed)
    days_ago = days_ago.astype(np.int64)
    date_missing = rng.random(n) < _VISIT_DATE_MISSING

    rows: list[dict[str, str]] = []
    for i in range(n):
        water = "" if cohort.water_empty[i] else WATER_STATUSES[cohort.water[i]]
        visit = REFERENCE_DATE - timedelta(days=int(days_ago[i]))
        rows.append(
            {
                "patient_ref": f"{prefix}-{numbers[i]:06d}",
                "age_years": str(int(cohort.age[i])),
                "sex": SEXES[cohort.sex[i]],
                "smoking_status": SMOKING_STATUSES[cohort.smoking[i]],
                "brushing_per_day": _number(cohort.brushing[i]),
                "flossing_days_per_week": str(int(cohort.flossing[i])),
                "sugary_drinks_per_day": _number(cohort.drinks[i]),
                "sugary_snacks_per_day": _number(cohort.snacks[i]),
                "fluoride_toothpaste": _bool_cell(bool(cohort.toothpaste[i])),
                "fluoridated_water": water,
                "dental_visits_per_year": _number(cohort.visits[i]),
                "diabetes": _bool_cell(bool(cohort.diabetes[i])),
                "bmi": "" if bmi_missing[i] else f"{cohort.bmi[i]:.1f}",
                "last_visit_date": "" if date_missing[i] else visit.isoformat(),
                "dmft": str(int(dmft[i])),
                "untreated_caries": _bool_cell(bool(caries[i])),
                "periodontitis": "" if stage[i] < 0 else PERIODONTITIS_STAGES[stage[i]],
                "consent_tier": CONSENT_TIERS[cohort.consent[i]],
            }
        )
    return rows
