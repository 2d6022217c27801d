"""Query validation: anything the clinics could not answer safely is refused up front."""

from __future__ import annotations

import pytest

from oralfed.schemas.contract import PatientRecord
from oralfed.schemas.query import (
    AGE_BAND,
    COLUMN_KINDS,
    ColumnKind,
    QueryError,
    column_bounds,
    group_levels,
    parse_query,
)
from tests.conftest import GOOD_ROW


def test_kinds_and_bounds_come_from_the_contract() -> None:
    assert COLUMN_KINDS["brushing_per_day"] is ColumnKind.NUMERIC
    assert COLUMN_KINDS["untreated_caries"] is ColumnKind.BOOLEAN
    assert COLUMN_KINDS["smoking_status"] is ColumnKind.CATEGORY
    assert "patient_ref" not in COLUMN_KINDS and "consent_tier" not in COLUMN_KINDS
    assert column_bounds("age_years") == (2.0, 110.0)
    assert column_bounds("sugary_drinks_per_day") == (0.0, 20.0)
    assert group_levels("periodontitis")[-1] == "not_examined"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"measure": "mean", "column": "shoe_size", "epsilon": 1}, "column: unknown column"),
        ({"measure": "mean", "column": "sex", "epsilon": 1}, "needs a boolean, numeric column"),
        ({"measure": "sum"}, "epsilon: Field required"),
        (
            {"measure": "count", "epsilon": 0},
            "epsilon: Input should be greater than or equal to 0.05",
        ),
        ({"measure": "count", "epsilon": 11}, "epsilon: Input should be less than"),
        ({"measure": "count", "epsilon": 1, "delta": 0.5}, "delta: Input should be less"),
        ({"measure": "count", "epsilon": 1, "group_by": ["bmi"]}, "'bmi' is continuous"),
        ({"measure": "count", "epsilon": 1, "group_by": ["nope"]}, "not a contract column"),
        ({"measure": "count", "epsilon": 1, "group_by": ["sex", "sex"]}, "listed twice"),
        ({"measure": "proportion", "column": "periodontitis", "epsilon": 1}, "value: "),
        ({"measure": "median", "column": "dmft", "epsilon": 1}, "measure: Input should be"),
        ({"measure": "quantile", "column": "dmft", "epsilon": 1, "quantiles": [1.5]}, "quantiles"),
        ({"measure": "count", "epsilon": 1, "unknown": 3}, "unknown: Extra inputs"),
        (
            {"measure": "count", "epsilon": 1, "group_by": ["sex", "smoking_status", AGE_BAND]},
            "makes 72 cells, more than the limit of 64",
        ),
    ],
)
def test_bad_queries_get_a_precise_error(query: dict, message: str) -> None:
    with pytest.raises(QueryError, match=message.replace("(", r"\(")):
        parse_query(query)


def test_the_operator_cell_limit_cannot_be_raised_by_the_caller() -> None:
    query = {"measure": "count", "epsilon": 1, "group_by": ["smoking_status"], "max_cells": 64}
    with pytest.raises(QueryError, match="limit of 2"):
        parse_query(query, max_cells=2)


def test_cells_and_values_follow_the_records() -> None:
    spec = parse_query(
        {
            "measure": "mean",
            "column": "bmi",
            "group_by": ["smoking_status", AGE_BAND],
            "epsilon": 1,
        }
    )
    assert spec.n_cells == 18 and len(spec.cells()) == 18
    records = [
        PatientRecord.model_validate({**GOOD_ROW, "smoking_status": "current", "age_years": "70"}),
        PatientRecord.model_validate({**GOOD_ROW, "bmi": None}),
    ]
    indices = spec.cell_indices(records)
    assert spec.cells()[indices[0]] == {"smoking_status": "current", AGE_BAND: "65+"}
    assert indices[1] == -1  # bmi missing: in no cell
    assert spec.values(records)[0] == pytest.approx(24.5)
