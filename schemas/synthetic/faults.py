"""Contract violations injected into clean rows, with a record of exactly which rows.

An importer test needs files whose broken rows are known in advance: each bad row gets
exactly one violation of one kind from :data:`FAULT_KINDS`, so "these rows, and only these,
are rejected" is a precise assertion. Only the chosen rows are touched; the random stream
is the clinic's own fault stream, so every other row stays byte-identical to the clean
output for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Final, TypeVar

import numpy as np

from oralfed.schemas.contract import REQUIRED_COLUMNS
from oralfed.schemas.synthetic.rows import REFERENCE_DATE

__all__ = ["FAULT_KINDS", "inject_faults"]

_T = TypeVar("_T")

#: The kinds of contract violation a faulty row can carry (exactly one per bad row).
FAULT_KINDS: Final[tuple[str, ...]] = (
    "age_out_of_range",
    "unknown_category",
    "malformed_boolean",
    "number_out_of_range",
    "non_numeric_number",
    "empty_required_cell",
    "future_visit_date",
    "bad_date_format",
    "duplicate_patient_ref",
    "invalid_patient_ref",
)

# The broken values each kind draws from: the mistakes real exports make (typos, decimal
# commas, free text in number fields, ambiguous date formats).
_BAD_AGES: Final = ("150", "-1", "0", "1", "111", "999")
_BAD_CATEGORIES: Final = (
    ("sex", "woman"),
    ("sex", "x"),
    ("smoking_status", "sometimes"),
    ("smoking_status", "social"),
    ("fluoridated_water", "partly"),
    ("periodontitis", "stage-5"),
    ("periodontitis", "gingivitis"),
    ("consent_tier", "all"),
)
_BOOLEAN_COLUMNS: Final = ("fluoride_toothpaste", "diabetes", "untreated_caries")
_BAD_BOOLEANS: Final = ("maybe", "2", "tru", "unsure", "-")
_OUT_OF_RANGE: Final = (
    ("brushing_per_day", "9"),
    ("brushing_per_day", "7.5"),
    ("flossing_days_per_week", "8"),
    ("flossing_days_per_week", "-1"),
    ("sugary_drinks_per_day", "25"),
    ("sugary_snacks_per_day", "21.5"),
    ("dental_visits_per_year", "13"),
    ("dental_visits_per_year", "52"),
    ("bmi", "95.0"),
    ("bmi", "5.2"),
    ("dmft", "33"),
    ("dmft", "40"),
)
_NON_NUMERIC: Final = (
    ("age_years", "twelve"),
    ("brushing_per_day", "two"),
    ("brushing_per_day", "1,5"),
    ("flossing_days_per_week", "often"),
    ("sugary_drinks_per_day", "a few"),
    ("sugary_drinks_per_day", "0,5"),
    ("sugary_snacks_per_day", "lots"),
    ("dental_visits_per_year", "twice"),
    ("bmi", "heavy"),
    ("dmft", "many"),
)
_EMPTY_REQUIRED: Final = tuple(c for c in REQUIRED_COLUMNS if c != "patient_ref")
_REF_BAD_SEPARATORS: Final = (" ", "#", "/", ".", "@", "é")


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    """One of ``options``, uniformly (one integer draw, whatever the element type)."""
    return options[int(rng.integers(len(options)))]


def _apply_fault(
    kind: str,
    row: dict[str, str],
    rng: np.random.Generator,
    duplicate_source: str | None,
) -> None:
    """Break exactly one contract rule in ``row`` (in place)."""
    if kind == "age_out_of_range":
        row["age_years"] = _pick(rng, _BAD_AGES)
    elif kind == "unknown_category":
        column, value = _pick(rng, _BAD_CATEGORIES)
        row[column] = value
    elif kind == "malformed_boolean":
        row[_pick(rng, _BOOLEAN_COLUMNS)] = _pick(rng, _BAD_BOOLEANS)
    elif kind == "number_out_of_range":
        column, value = _pick(rng, _OUT_OF_RANGE)
        row[column] = value
    elif kind == "non_numeric_number":
        column, value = _pick(rng, _NON_NUMERIC)
        row[column] = value
    elif kind == "empty_required_cell":
        row[_pick(rng, _EMPTY_REQUIRED)] = ""
    elif kind == "future_visit_date":
        # A century typo (2126 for 2026): in the future for any importer run this century.
        future_year = REFERENCE_DATE.year + 100 + int(rng.integers(4))
        row["last_visit_date"] = date(future_year, int(rng.integers(1, 13)), 15).isoformat()
    elif kind == "bad_date_format":
        written = row["last_visit_date"] or (REFERENCE_DATE - timedelta(days=100)).isoformat()
        year, month, day = written.split("-")
        formats = (
            f"{day}/{month}/{year}",
            f"{year}/{month}/{day}",
            f"{year}{month}{day}",
            f"{year}-02-30",
            f"{year}-13-{day}",
            f"{int(month)}/{int(day)}/{year}",
        )
        row["last_visit_date"] = _pick(rng, formats)
    elif kind == "duplicate_patient_ref":
        assert duplicate_source is not None
        row["patient_ref"] = duplicate_source
    elif kind == "invalid_patient_ref":
        row["patient_ref"] = row["patient_ref"].replace("-", _pick(rng, _REF_BAD_SEPARATORS))
    else:  # pragma: no cover - FAULT_KINDS and this function are kept in step
        raise AssertionError(kind)


def inject_faults(rows: list[dict[str, str]], n_bad: int, rng: np.random.Generator) -> list[int]:
    """Break ``n_bad`` distinct rows in place, one violation each; their 1-based numbers.

    A duplicated ``patient_ref`` is copied from an earlier *clean* row: an importer keeps
    the first occurrence and rejects the later one, so only the modified row is bad. The
    numbers come back sorted.
    """
    bad = np.sort(rng.choice(len(rows), size=n_bad, replace=False))
    is_bad = np.zeros(len(rows), dtype=bool)
    is_bad[bad] = True
    # Clean rows that may lend their ref, in order; each lends at most once.
    lenders = np.flatnonzero(~is_bad)
    used = np.zeros(len(rows), dtype=bool)
    for index in bad.tolist():
        kind = _pick(rng, FAULT_KINDS)
        source: str | None = None
        if kind == "duplicate_patient_ref":
            earlier = lenders[(lenders < index) & ~used[lenders]]
            if earlier.size == 0:  # nothing before this row to copy: break it another way
                kind = "invalid_patient_ref"
            else:
                lender = int(earlier[int(rng.integers(earlier.size))])
                used[lender] = True
                source = rows[lender]["patient_ref"]
        _apply_fault(kind, rows[index], rng, source)
    return [int(i) + 1 for i in bad]
