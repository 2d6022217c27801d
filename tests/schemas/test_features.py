"""The shared feature encoding: fixed scaling, one column per name, outcome labels."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from oralfed.schemas.contract import FluoridatedWater, PatientRecord, Sex, SmokingStatus
from oralfed.schemas.features import (
    AGE_BAND_FEATURES,
    BMI_CENTRE,
    BMI_SCALE,
    BOOLEAN_FEATURES,
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    NUM_FEATURES,
    NUMERIC_FEATURES,
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


def _one_by_one(record: PatientRecord) -> list[float]:
    """The encoding written out one record at a time, as it was before it went columnar."""
    values = [(float(getattr(record, n)) - c) / s for n, c, s in NUMERIC_FEATURES]
    bmi = record.bmi
    values += [0.0, 1.0] if bmi is None else [(bmi - BMI_CENTRE) / BMI_SCALE, 0.0]
    for column, enum in CATEGORICAL_FEATURES:
        values += [float(getattr(record, column) == member) for member in enum]
    values += [float(getattr(record, name)) for name in BOOLEAN_FEATURES]
    values += [float(lo <= record.age_years <= hi) for _, lo, hi in AGE_BAND_FEATURES]
    return values


records = st.builds(
    lambda **cells: record(**{k: str(v) for k, v in cells.items()}),
    age_years=st.integers(2, 110),
    sex=st.sampled_from([m.value for m in Sex]),
    smoking_status=st.sampled_from([m.value for m in SmokingStatus]),
    fluoridated_water=st.sampled_from(["", *(m.value for m in FluoridatedWater)]),
    brushing_per_day=st.floats(0, 6).map(lambda v: round(v, 3)),
    flossing_days_per_week=st.integers(0, 7),
    sugary_drinks_per_day=st.floats(0, 20).map(lambda v: round(v, 3)),
    dental_visits_per_year=st.floats(0, 12).map(lambda v: round(v, 3)),
    bmi=st.one_of(st.just(""), st.floats(10, 80).map(lambda v: round(v, 2))),
    diabetes=st.sampled_from(["true", "false"]),
    fluoride_toothpaste=st.sampled_from(["yes", "no"]),
)


@given(st.lists(records, max_size=12))
def test_the_columnar_encoding_is_the_one_record_at_a_time_encoding(
    batch: list[PatientRecord],
) -> None:
    expected = np.array([_one_by_one(r) for r in batch], dtype=np.float32).reshape(
        len(batch), NUM_FEATURES
    )
    np.testing.assert_array_equal(encode_features(batch), expected)
