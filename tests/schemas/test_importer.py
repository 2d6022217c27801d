"""The importer: every contract rule, and rows read = accepted + rejected."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oralfed.schemas.contract import CONTRACT_COLUMNS, FluoridatedWater, PatientRecord
from oralfed.schemas.importer import ContractError, import_file, write_quarantine
from oralfed.schemas.synthetic import clinic_profiles, synthesize_clinic_with_faults
from tests.conftest import GOOD_ROW, WriteCsv, good_rows


def test_clean_file_is_accepted_whole(write_csv: WriteCsv) -> None:
    result = import_file(write_csv(good_rows(5)))
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (5, 5, 0)
    assert isinstance(result.accepted[0], PatientRecord)
    assert len(result.fingerprint) == 64


@pytest.mark.parametrize(
    ("column", "value", "rule_part"),
    [
        ("age_years", "111", "at most 110"),
        ("age_years", "1", "at least 2"),
        ("age_years", "40.5", "whole number"),
        ("sex", "Female", "must be one of"),
        ("smoking_status", "sometimes", "must be one of"),
        ("brushing_per_day", "7", "at most 6"),
        ("brushing_per_day", "two", "must be a number"),
        ("sugary_drinks_per_day", "0,5", "must be a number"),
        ("sugary_snacks_per_day", "-1", "at least 0"),
        ("flossing_days_per_week", "8", "at most 7"),
        ("fluoride_toothpaste", "maybe", "true/false"),
        ("dental_visits_per_year", "13", "at most 12"),
        ("bmi", "9", "at least 10"),
        ("last_visit_date", "01/02/2024", "YYYY-MM-DD"),
        ("last_visit_date", "2024-02-30", "calendar date"),
        ("last_visit_date", "1899-12-31", "before 1900"),
        ("last_visit_date", (date.today() + timedelta(days=2)).isoformat(), "future"),
        ("dmft", "33", "at most 32"),
        ("periodontitis", "terrible", "must be one of"),
        ("consent_tier", "everything", "must be one of"),
        ("patient_ref", "p 001!", "characters"),
        ("patient_ref", "x" * 65, "characters"),
        ("diabetes", "", "required"),
        ("brushing_per_day", "nan", "number"),
    ],
)
def test_each_rule_rejects_with_column_value_and_reason(
    write_csv: WriteCsv, column: str, value: str, rule_part: str
) -> None:
    rows = good_rows(3)
    rows[1][column] = value
    result = import_file(write_csv(rows))
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (3, 2, 1)
    rejected = result.rejected[0]
    assert rejected.row == 2
    [issue] = rejected.issues
    assert issue.column == column
    assert issue.value == value.strip()
    assert rule_part in issue.rule


def test_a_row_with_several_problems_lists_them_all(write_csv: WriteCsv) -> None:
    rows = good_rows(1)
    rows[0].update(age_years="200", sex="x", dmft="-3")
    [rejected] = import_file(write_csv(rows)).rejected
    assert {issue.column for issue in rejected.issues} == {"age_years", "sex", "dmft"}


def test_duplicate_patient_ref_names_the_first_row(write_csv: WriteCsv) -> None:
    rows = good_rows(3)
    rows[2]["patient_ref"] = rows[0]["patient_ref"]
    result = import_file(write_csv(rows))
    [rejected] = result.rejected
    assert rejected.row == 3
    assert "row 1" in rejected.issues[0].rule


@pytest.mark.parametrize("word", ["TRUE", "Yes", "1", " true "])
def test_boolean_spellings_accepted(write_csv: WriteCsv, word: str) -> None:
    rows = good_rows(1)
    rows[0]["diabetes"] = word
    assert import_file(write_csv(rows)).accepted[0].diabetes is True


def test_optional_cells_may_be_empty(write_csv: WriteCsv) -> None:
    rows = good_rows(1)
    rows[0].update(fluoridated_water="", bmi="", last_visit_date="", periodontitis="")
    record = import_file(write_csv(rows)).accepted[0]
    assert record.fluoridated_water is FluoridatedWater.UNKNOWN
    assert record.bmi is None and record.last_visit_date is None and record.periodontitis is None


def test_optional_columns_may_be_absent_and_unknown_ones_are_ignored(write_csv: WriteCsv) -> None:
    header = [c for c in CONTRACT_COLUMNS if c not in ("bmi", "periodontitis")] + [
        "notes",
        "postcode",
    ]
    rows = [{**row, "notes": "x", "postcode": "123"} for row in good_rows(2)]
    result = import_file(write_csv(rows, header))
    assert result.rows_accepted == 2
    assert result.ignored_columns == ["notes", "postcode"]


def test_missing_required_column_refuses_the_file_naming_it(write_csv: WriteCsv) -> None:
    header = [c for c in CONTRACT_COLUMNS if c != "dmft"]
    with pytest.raises(ContractError, match=r"missing required column\(s\): dmft"):
        import_file(write_csv(good_rows(2), header))


def test_non_contract_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv"
    path.write_text("date,amount\n2024-01-01,3\n")
    with pytest.raises(ContractError, match="not an OralFed contract file"):
        import_file(path)


@pytest.mark.parametrize(("content", "message"), [(b"", "empty"), (b"  \n", "empty")])
def test_empty_file_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(ContractError, match=message):
        import_file(path)


def test_header_without_rows_is_refused(write_csv: WriteCsv) -> None:
    with pytest.raises(ContractError, match="no data rows"):
        import_file(write_csv([]))


def test_non_utf8_file_names_the_line(write_csv: WriteCsv) -> None:
    path = write_csv(good_rows(3))
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"female", b"f\xe9male")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ContractError, match=r"not UTF-8.*line 3"):
        import_file(path)


def test_repeated_header_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text(",".join([*CONTRACT_COLUMNS, "sex"]) + "\n")
    with pytest.raises(ContractError, match="repeats column"):
        import_file(path)


def test_row_with_surplus_cells_is_rejected(write_csv: WriteCsv) -> None:
    path = write_csv(good_rows(2))
    with path.open("a") as stream:
        stream.write(
            ",".join(GOOD_ROW[c] for c in CONTRACT_COLUMNS).replace("p-001", "p-x") + ",extra\n"
        )
    result = import_file(path)
    assert result.rows_read == 3 and result.rows_rejected == 1
    assert "more cells" in result.rejected[0].issues[0].rule


def test_missing_file_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="no such file"):
        import_file(tmp_path / "nope.csv")


def test_parquet_with_typed_columns(tmp_path: Path) -> None:
    rows = good_rows(3)
    table = {column: [row[column] for row in rows] for column in CONTRACT_COLUMNS}
    table["age_years"] = [40, 41, 200]
    table["diabetes"] = [False, True, False]
    table["last_visit_date"] = [date(2025, 1, 1), None, date(2024, 5, 5)]
    path = tmp_path / "clinic.parquet"
    pq.write_table(pa.table(table), path)
    result = import_file(path)
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (3, 2, 1)
    assert result.accepted[1].diabetes is True
    assert result.rejected[0].issues[0].column == "age_years"


def test_unreadable_parquet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(ContractError, match="Parquet"):
        import_file(path)


def test_quarantine_has_one_line_per_broken_rule(write_csv: WriteCsv, tmp_path: Path) -> None:
    rows = good_rows(4)
    rows[0].update(age_years="999", sex="?")
    rows[3]["dmft"] = "many"
    result = import_file(write_csv(rows))
    path = write_quarantine(result, tmp_path / "out" / "q.csv")
    with path.open() as stream:
        lines = list(csv.DictReader(stream))
    assert [(line["row"], line["column"]) for line in lines] == [
        ("1", "age_years"),
        ("1", "sex"),
        ("4", "dmft"),
    ]
    assert lines[0]["value"] == "999" and lines[0]["rule"]


def test_synthetic_faults_are_exactly_the_rejected_rows(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    profile = clinic_profiles(2, seed=3)[0]
    rows, bad_rows = synthesize_clinic_with_faults(profile, seed=3, bad_row_fraction=0.05)
    result = import_file(write_csv(rows))
    assert result.rows_read == len(rows) == result.rows_accepted + result.rows_rejected
    assert sorted(r.row for r in result.rejected) == sorted(bad_rows)
