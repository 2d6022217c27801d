"""The shared feature encoding: fixed scaling, one column per name, outcome labels."""

from __future__ import annotations

import numpy as np

from oralfed.schemas.contract import PatientRecord
from oralfed.schemas.features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    Task,
    encode_features,
    encode_labels,
    has_label,
)
from oralfed.schemas.importer import validate_row
from tests.conftest import GOOD_ROW


def record(**changes: str) -> PatientRecord:
    accepted, issues = validate_row({**GOOD_ROW, **changes})
    assert accepted is not None, issues
    return accepted


def test_columns_match_names_and_scaling_is_fixed() -> None:
    matrix = encode_features([record(), record(age_years="60", smoking_status="current", bmi="")])
    assert matrix.shape == (2, NUM_FEATURES) and matrix.dtype == np.float32
    column = {name: index for index, name in enumerate(FEATURE_NAMES)}
    assert matrix[0, column["age_years"]] == 0.0  # (40 - 40) / 20
    assert matrix[1, column["age_years"]] == 1.0
    assert matrix[1, column["smoking_status=current"]] == 1.0
    assert matrix[1, column["smoking_status=never"]] == 0.0
    assert matrix[1, column["bmi_missing"]] == 1.0 and matrix[1, column["bmi"]] == 0.0
    assert matrix[0, column["fluoride_toothpaste"]] == 1.0


def test_encoding_does_not_depend_on_the_other_rows() -> None:
    """No data-dependent scaling: a record encodes the same alone or in any company."""
    alone = encode_features([record()])
    together = encode_features([record(age_years="90", bmi="70"), record()])
    np.testing.assert_array_equal(alone[0], together[1])


def test_labels_per_task() -> None:
    records = [
        record(untreated_caries="true", periodontitis="severe"),
        record(periodontitis="mild"),
    ]
    np.testing.assert_array_equal(encode_labels(records, Task.UNTREATED_CARIES), [1.0, 0.0])
    np.testing.assert_array_equal(encode_labels(records, Task.PERIODONTITIS), [1.0, 0.0])
    assert not has_label(record(periodontitis=""), Task.PERIODONTITIS)
    assert has_label(record(periodontitis=""), Task.UNTREATED_CARIES)


def test_dmft_is_never_a_feature() -> None:
    assert not any(name.startswith("dmft") for name in FEATURE_NAMES)
