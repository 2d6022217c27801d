"""An aggregate-insight query: what a researcher may ask of the clinics, checked up front.

Which columns can be measured, how, and grouped by what follows from the data contract
(:class:`~schemas.contract.PatientRecord`): numeric columns carry their contract range,
which bounds every patient's contribution and so fixes the noise; booleans and categories
can be counted and grouped. A query that does not fit is refused here, before any clinic
is asked and before any budget is spent.

The mapping from records to cells and values lives here as well, so the clinic and the
tests compute exactly the same thing the query means.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Self

import numpy as np
from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from oralfed.schemas.contract import PatientRecord
from oralfed.schemas.errors import ExitCode, OralFedError

MAX_QUERY_EPSILON = 10.0  # beyond this a single answer is practically non-private
# The least ε every accountant a clinic or token may use can calibrate at every δ in range:
# calibration searches noise multipliers up to 1e4 (privacy/calibration.py), and the RDP
# accountant's fixed orders find none for ε = 0.01 at δ = 1e-12 (tests/server/
# test_insights_api_abuse.py checks every corner). Such noise (~200 records per count)
# would swamp any clinic's cell anyway.
MIN_QUERY_EPSILON = 0.05
MAX_QUERY_DELTA = 1e-3
# The PLD accountant certifies no noise at all at δ far below this (δ = 1e-50 fails even
# at ε = 10), so a smaller δ would only turn into a calibration error at every clinic.
MIN_QUERY_DELTA = 1e-12
DEFAULT_QUERY_DELTA = 1e-6
DEFAULT_MAX_CELLS = 64
MAX_CELLS_LIMIT = 10_000  # the most cells an operator may allow (each is a vector entry)
MAX_QUANTILES = 20  # each quantile is a bootstrap at the coordinator
MAX_NAME_LENGTH = 64  # column and level names are short contract words
DEFAULT_HISTOGRAM_BINS = 10
DEFAULT_QUANTILE_BINS = 64  # quantiles are read off a fine fixed grid over the contract range
MAX_BINS = 200
AGE_BAND = "age_band"
NOT_EXAMINED = "not_examined"  # the level of a missing optional category (periodontitis)
# (label, lowest age, highest age), the bands of CDC oral-health surveillance reports.
REPORTING_AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("2-5", 2, 5),
    ("6-19", 6, 19),
    ("20-34", 20, 34),
    ("35-49", 35, 49),
    ("50-64", 50, 64),
    ("65+", 65, 110),
)
# Identity, administrative or consent fields: never measured or grouped by.
_NOT_QUERYABLE = frozenset({"patient_ref", "last_visit_date", "consent_tier"})


class QueryError(OralFedError, ValueError):
    """A query that cannot be run; the message names the field and what is wrong."""

    exit_code = ExitCode.INVALID_QUERY


class Measure(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    PROPORTION = "proportion"
    HISTOGRAM = "histogram"
    QUANTILE = "quantile"


class Mechanism(StrEnum):
    GAUSSIAN = "gaussian"
    LAPLACE = "laplace"


class ColumnKind(StrEnum):
    NUMERIC = "numeric"
    BOOLEAN = "boolean"
    CATEGORY = "category"


def _column_kinds() -> dict[str, ColumnKind]:
    kinds: dict[str, ColumnKind] = {}
    for name, field in PatientRecord.model_fields.items():
        if name in _NOT_QUERYABLE:
            continue
        annotation = field.annotation
        members = getattr(annotation, "__args__", (annotation,))
        if bool in members:
            kinds[name] = ColumnKind.BOOLEAN
        elif any(isinstance(m, type) and issubclass(m, StrEnum) for m in members):
            kinds[name] = ColumnKind.CATEGORY
        elif any(isinstance(m, Ge) for m in field.metadata):
            kinds[name] = ColumnKind.NUMERIC
    return kinds


COLUMN_KINDS: dict[str, ColumnKind] = _column_kinds()

# Which column kinds each measure accepts (count also takes no column at all).
MEASURE_KINDS: dict[Measure, frozenset[ColumnKind]] = {
    Measure.COUNT: frozenset(ColumnKind),
    Measure.SUM: frozenset({ColumnKind.NUMERIC}),
    Measure.MEAN: frozenset({ColumnKind.NUMERIC, ColumnKind.BOOLEAN}),
    Measure.PROPORTION: frozenset({ColumnKind.BOOLEAN, ColumnKind.CATEGORY}),
    Measure.HISTOGRAM: frozenset({ColumnKind.NUMERIC}),
    Measure.QUANTILE: frozenset({ColumnKind.NUMERIC}),
}
# The local statistic each measure releases besides the counts (see privacy.mechanisms).
MEASURE_STATISTIC: dict[Measure, str | None] = {
    Measure.COUNT: None,
    Measure.SUM: "sum",
    Measure.MEAN: "sum",
    Measure.PROPORTION: "positives",
    Measure.HISTOGRAM: "bins",
    Measure.QUANTILE: "bins",
}


def column_bounds(column: str) -> tuple[float, float]:
    """The contract's range of a numeric column (a boolean is 0..1)."""
    if COLUMN_KINDS.get(column) is ColumnKind.BOOLEAN:
        return 0.0, 1.0
    field = PatientRecord.model_fields[column]
    low = next(m.ge for m in field.metadata if isinstance(m, Ge))
    high = next(m.le for m in field.metadata if isinstance(m, Le))
    return _bound(column, low), _bound(column, high)


def _bound(column: str, bound: object) -> float:
    """A ``ge``/``le`` bound of the contract (annotated-types types it as merely comparable)."""
    if not isinstance(bound, int | float):
        raise TypeError(f"the contract's bound {bound!r} of {column} is not a number")
    return float(bound)


def _enum_of(column: str) -> type[StrEnum]:
    annotation = PatientRecord.model_fields[column].annotation
    members = getattr(annotation, "__args__", (annotation,))
    return next(m for m in members if isinstance(m, type) and issubclass(m, StrEnum))


def _nullable(column: str) -> bool:
    return not PatientRecord.model_fields[column].is_required() and (
        PatientRecord.model_fields[column].default is None
    )


def group_levels(column: str) -> tuple[str, ...]:
    """Every value a group-by column can take, fixed in advance so cells never depend on data."""
    if column == AGE_BAND:
        return tuple(label for label, _, _ in REPORTING_AGE_BANDS)
    kind = COLUMN_KINDS.get(column)
    if kind is ColumnKind.BOOLEAN:
        return ("false", "true")
    if kind is ColumnKind.CATEGORY:
        levels = tuple(member.value for member in _enum_of(column))
        return (*levels, NOT_EXAMINED) if _nullable(column) else levels
    raise QueryError(f"group_by: {column!r} is not a category column")


GROUP_BY_COLUMNS: tuple[str, ...] = (
    *(c for c, k in COLUMN_KINDS.items() if k in (ColumnKind.BOOLEAN, ColumnKind.CATEGORY)),
    AGE_BAND,
)


_Name = Annotated[StrictStr, Field(max_length=MAX_NAME_LENGTH)]
_Fraction = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class QuerySpec(BaseModel):
    """One aggregate query. Validation refuses anything the clinics could not answer safely.

    Every field is typed strictly (a number is never a string or a bool, a count is never
    1.5) and bounded to what the mechanisms can calibrate, because the query is read from a
    researcher's JSON and nothing past this model may fail on a value it let through.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    measure: Measure
    column: _Name | None = None
    value: _Name | None = Field(
        default=None, description="proportion of a category column: the level counted"
    )
    group_by: tuple[_Name, ...] = Field(default=(), max_length=len(GROUP_BY_COLUMNS))
    epsilon: float = Field(
        strict=True, ge=MIN_QUERY_EPSILON, le=MAX_QUERY_EPSILON, allow_inf_nan=False
    )
    delta: float = Field(
        default=DEFAULT_QUERY_DELTA,
        strict=True,
        ge=MIN_QUERY_DELTA,
        le=MAX_QUERY_DELTA,
        allow_inf_nan=False,
    )
    mechanism: Mechanism = Mechanism.GAUSSIAN
    bins: int | None = Field(default=None, strict=True, ge=2, le=MAX_BINS)
    quantiles: tuple[_Fraction, ...] = Field(default=(0.5,), min_length=1, max_length=MAX_QUANTILES)
    max_cells: int = Field(default=DEFAULT_MAX_CELLS, strict=True, ge=1, le=MAX_CELLS_LIMIT)

    @model_validator(mode="after")
    def _fits_the_contract(self) -> Self:
        if self.column is None:
            if self.measure is not Measure.COUNT:
                raise ValueError(f"column: measure {self.measure.value!r} needs a column")
        else:
            kind = COLUMN_KINDS.get(self.column)
            if kind is None:
                raise ValueError(
                    f"column: unknown column {self.column!r}; queryable columns: "
                    f"{', '.join(sorted(COLUMN_KINDS))}"
                )
            if kind not in MEASURE_KINDS[self.measure]:
                allowed = ", ".join(sorted(k.value for k in MEASURE_KINDS[self.measure]))
                raise ValueError(
                    f"column: {self.column!r} is {kind.value}; measure {self.measure.value!r} "
                    f"needs a {allowed} column"
                )
            if self.measure is Measure.PROPORTION and kind is ColumnKind.CATEGORY:
                levels = tuple(member.value for member in _enum_of(self.column))
                if self.value not in levels:
                    raise ValueError(
                        f"value: proportion of {self.column!r} needs value= one of "
                        f"{', '.join(levels)}, got {self.value!r}"
                    )
        if self.value is not None and not (
            self.measure is Measure.PROPORTION
            and COLUMN_KINDS.get(self.column or "") is ColumnKind.CATEGORY
        ):
            raise ValueError("value: only a proportion of a category column takes a value")
        for column in self.group_by:
            if column not in GROUP_BY_COLUMNS:
                why = (
                    "is continuous; group by age_band or a category column instead"
                    if column in COLUMN_KINDS
                    else "is not a contract column"
                )
                raise ValueError(
                    f"group_by: {column!r} {why} (allowed: {', '.join(GROUP_BY_COLUMNS)})"
                )
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by: a column is listed twice")
        if self.bins is not None and self.measure not in (Measure.HISTOGRAM, Measure.QUANTILE):
            raise ValueError("bins: only histogram and quantile queries take bins")
        if self.measure is Measure.QUANTILE and not (
            self.quantiles and all(0 < q < 1 for q in self.quantiles)
        ):
            raise ValueError("quantiles: each must be strictly between 0 and 1")
        n_cells = self.n_cells
        if n_cells > self.max_cells:
            raise ValueError(
                f"group_by: {' x '.join(self.group_by)} makes {n_cells} cells, more than the "
                f"limit of {self.max_cells}"
            )
        return self

    @property
    def statistic(self) -> str | None:
        return MEASURE_STATISTIC[self.measure]

    @property
    def n_cells(self) -> int:
        return math.prod(len(group_levels(c)) for c in self.group_by)

    def cells(self) -> list[dict[str, str]]:
        """Every cell, in the order of :meth:`cell_indices`; one empty cell without group-by."""
        names = self.group_by
        return [
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(group_levels(c) for c in names))
        ]

    def edges(self) -> np.ndarray | None:
        """Fixed bin edges over the contract range (histogram and quantile), else None."""
        if self.statistic != "bins":
            return None
        assert self.column is not None
        default = (
            DEFAULT_HISTOGRAM_BINS if self.measure is Measure.HISTOGRAM else (DEFAULT_QUANTILE_BINS)
        )
        low, high = column_bounds(self.column)
        return np.linspace(low, high, (self.bins or default) + 1)

    def cell_indices(self, records: Sequence[PatientRecord]) -> np.ndarray:
        """Each record's cell (row-major over ``group_by``), -1 if the column is missing."""
        sizes = [len(group_levels(c)) for c in self.group_by]
        lookups = [{level: i for i, level in enumerate(group_levels(c))} for c in self.group_by]
        indices = np.empty(len(records), dtype=int)
        for row, record in enumerate(records):
            if self.column is not None and getattr(record, self.column) is None:
                indices[row] = -1
                continue
            index = 0
            for column, size, lookup in zip(self.group_by, sizes, lookups, strict=True):
                index = index * size + lookup[_level(record, column)]
            indices[row] = index
        return indices

    def values(self, records: Sequence[PatientRecord]) -> np.ndarray | None:
        """The measured value of each record (0/1 for proportions); None for a count."""
        if self.statistic is None:
            return None
        assert self.column is not None
        if self.measure is Measure.PROPORTION and self.value is not None:
            return np.array(
                [float(_level(r, self.column) == self.value) for r in records], dtype=float
            )
        raw = [getattr(r, self.column) for r in records]
        return np.array([math.nan if v is None else float(v) for v in raw], dtype=float)

    def bounds(self) -> tuple[float, float] | None:
        """The clipping range of a summed column, from the contract."""
        return column_bounds(self.column) if self.statistic == "sum" and self.column else None

    def describe(self) -> str:
        """One readable line, e.g. 'proportion of untreated_caries by smoking_status'."""
        what = self.measure.value
        if self.column:
            what += f" of {self.column}" + (f"={self.value}" if self.value else "")
        if self.group_by:
            what += " by " + ", ".join(self.group_by)
        return what


def _level(record: PatientRecord, column: str) -> str:
    if column == AGE_BAND:
        age = record.age_years
        return next(label for label, low, high in REPORTING_AGE_BANDS if low <= age <= high)
    value = getattr(record, column)
    if value is None:
        return NOT_EXAMINED
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value.value if isinstance(value, StrEnum) else value)


def parse_query(data: Mapping[str, Any], max_cells: int | None = None) -> QuerySpec:
    """Validate a query from JSON-like data; :class:`QueryError` lists every problem by field.

    ``max_cells`` is the operator's limit; a caller-supplied ``max_cells`` can only lower it.
    The caller's value is validated as a field like any other before it is compared.
    """
    values = {**({} if max_cells is None else {"max_cells": max_cells}), **data}
    try:
        spec = QuerySpec.model_validate(values)
        if max_cells is not None and spec.max_cells > max_cells:
            spec = QuerySpec.model_validate({**values, "max_cells": max_cells})
    except ValidationError as error:
        raise QueryError(_validation_message(error)) from None
    return spec


def _validation_message(error: ValidationError) -> str:
    messages = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        text = str(problem["msg"]).removeprefix("Value error, ")
        messages.append(text if not location else f"{location}: {text}")
    return "; ".join(messages)
