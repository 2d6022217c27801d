"""Cells of any size, and any bytes at all: a report or a ContractError, never a traceback.

``csv`` refuses a cell over 131,072 characters mid-file (``_csv.Error: field larger than
field limit``); the importer reads CSV itself, by the same rules, and rejects the row of a
cell past :data:`~oralfed.schemas.csv_reader.CELL_LIMIT` naming the row and column.
"""

from __future__ import annotations

import csv
import io
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oralfed.schemas.contract import CONTRACT_COLUMNS
from oralfed.schemas.csv_reader import CELL_LIMIT, CsvSource
from oralfed.schemas.importer import ContractError, ImportResult, import_file
from tests.conftest import GOOD_ROW, WriteCsv, good_rows, run_cli

NOTES = [*CONTRACT_COLUMNS, "notes"]


def rows_with_notes(*notes: str) -> list[dict[str, str]]:
    return [{**row, "notes": note} for row, note in zip(good_rows(len(notes)), notes, strict=True)]


def assert_counts(result: ImportResult) -> None:
    assert result.rows_read == result.rows_accepted + result.rows_rejected


@pytest.mark.parametrize("column", ["notes", "sex", "patient_ref"])
@pytest.mark.parametrize("size", [CELL_LIMIT + 1, 3 * CELL_LIMIT])
def test_a_cell_past_the_limit_rejects_its_row_naming_row_and_column(
    write_csv: WriteCsv, column: str, size: int
) -> None:
    rows = rows_with_notes("a", "b", "c")
    rows[1][column] = 'x,"\n' * (size // 4) + "x" * (size % 4)  # quoted: commas, newlines
    result = import_file(write_csv(rows, NOTES))
    assert_counts(result)
    assert (result.rows_read, result.rows_accepted) == (3, 2)
    [rejected] = result.rejected
    assert rejected.row == 2
    issue = next(issue for issue in rejected.issues if issue.column == column)
    assert f"{size:,} characters" in issue.rule and f"{CELL_LIMIT:,}" in issue.rule


def test_a_cell_at_the_limit_is_read_whole(write_csv: WriteCsv) -> None:
    result = import_file(write_csv(rows_with_notes("n" * CELL_LIMIT, "short"), NOTES))
    assert (result.rows_accepted, result.rows_rejected) == (2, 0)


def test_an_unquoted_huge_cell_is_rejected_too(tmp_path: Path) -> None:
    header = ",".join(NOTES)
    good = ",".join(GOOD_ROW[c] for c in CONTRACT_COLUMNS)
    path = tmp_path / "clinic.csv"
    other = good.replace("p-001", "p-2")
    path.write_text(f"{header}\n{good},{'z' * (CELL_LIMIT + 10)}\n{other},ok\n")
    result = import_file(path)
    assert_counts(result)
    assert result.rows_accepted == 1 and result.rejected[0].issues[0].column == "notes"


def test_a_huge_cell_is_never_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "clinic.csv"
    good = ",".join(GOOD_ROW[c] for c in CONTRACT_COLUMNS)
    with path.open("w") as stream:
        stream.write(",".join(NOTES) + "\n" + good + ',"')
        for _ in range(400):  # a 40 MB notes cell
            stream.write("y" * 100_000)
        stream.write('"\n')
    tracemalloc.start()
    try:
        result = import_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.rows_rejected == 1 and result.rejected[0].issues[0].column == "notes"
    assert peak < 4 * CELL_LIMIT * 4  # a few cells' worth, not 40 MB


def test_a_quote_never_closed_rejects_its_row(tmp_path: Path) -> None:
    header = ",".join(NOTES)
    good = ",".join(GOOD_ROW[c] for c in CONTRACT_COLUMNS)
    path = tmp_path / "clinic.csv"
    path.write_text(f'{header}\n{good},fine\n{good.replace("p-001", "p-2")},"open\nmore,rows\n')
    result = import_file(path)
    assert (result.rows_read, result.rows_accepted) == (2, 1)
    [issue] = result.rejected[0].issues
    assert issue.column == "notes" and "never closed" in issue.rule


def test_nul_bytes_and_stray_quotes_are_rows_not_crashes(tmp_path: Path) -> None:
    header = ",".join(NOTES)
    good = ",".join(GOOD_ROW[c] for c in CONTRACT_COLUMNS)
    path = tmp_path / "clinic.csv"
    lines = [
        header,
        f"{good},a\0b",  # NUL in an ignored column: accepted
        good.replace("p-001", "p-\0two") + ",x",  # NUL in the id: rejected
        good.replace("p-001", 'p"3') + ',"quoted"tail',  # quotes as written, then text after
    ]
    path.write_bytes("\n".join(lines).encode())
    result = import_file(path)
    assert_counts(result)
    assert result.rows_read == 3 and result.rows_accepted == 1


def test_a_huge_parquet_cell_rejects_its_row(tmp_path: Path) -> None:
    rows = rows_with_notes("fine", "w" * (CELL_LIMIT + 1))
    path = tmp_path / "clinic.parquet"
    pq.write_table(pa.table({name: [row[name] for row in rows] for name in NOTES}), path)
    result = import_file(path)
    assert (result.rows_accepted, result.rejected[0].row) == (1, 2)
    assert result.rejected[0].issues[0].column == "notes"


def test_a_huge_header_cell_is_a_contract_error(tmp_path: Path) -> None:
    path = tmp_path / "clinic.csv"
    path.write_text(",".join(CONTRACT_COLUMNS) + "," + "h" * (CELL_LIMIT + 1) + "\n1\n")
    with pytest.raises(ContractError, match="header line 1, column 19"):
        import_file(path)


def test_the_validate_help_states_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "data", "validate", "--help")
    assert code == 0 and f"{CELL_LIMIT:,}" in out


def test_validate_reports_a_huge_cell_without_a_traceback(
    write_csv: WriteCsv, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(rows_with_notes("q" * (2 * CELL_LIMIT), "fine"), NOTES)
    code, out, err = run_cli(capsys, "data", "validate", path, "--json")
    assert code == 0 and "Traceback" not in out + err
    assert '"rows_rejected": 1' in out and '"rows_accepted": 1' in out


# --- the same records as csv, whatever the text ------------------------------------------------

PIECES = st.sampled_from(["a", "1", ",", '"', '""', "\n", "\r", "\r\n", " ", "é", "\0", "x,y"])


def csv_records(data: bytes) -> list[list[str]]:
    text = data.decode("utf-8-sig")
    return [row for row in csv.reader(io.StringIO(text, newline="")) if row != []]


@settings(max_examples=400, deadline=None)
@given(text=st.lists(PIECES, max_size=40).map("".join), chunk=st.integers(1, 8))
def test_records_are_csvs_records(text: str, chunk: int) -> None:
    """The tokeniser reads what ``csv`` reads (for cells within csv's own limit), chunked
    at any size."""
    from oralfed.schemas import csv_reader

    original = csv_reader._CHUNK
    csv_reader._CHUNK = chunk  # type: ignore[misc]
    try:
        source = CsvSource(Path("t.csv"), io.BytesIO(text.encode()), keep=10_000)
        assert [r.cells for r in source.records()] == csv_records(text.encode())
    finally:
        csv_reader._CHUNK = original  # type: ignore[misc]


CELLS = st.one_of(
    st.sampled_from(list(GOOD_ROW.values())),
    st.text(st.sampled_from('ab,"\n\r\0 é'), max_size=12),
    st.builds(lambda n, c: c * n, st.sampled_from([CELL_LIMIT - 1, CELL_LIMIT + 1]), PIECES),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.lists(CELLS, min_size=1, max_size=len(NOTES) + 2), min_size=1, max_size=6),
    raw_tail=st.binary(max_size=20),
)
def test_any_file_is_a_report_or_a_contract_error(
    tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]], raw_tail: bytes
) -> None:
    """Rows of good values, junk and huge cells, quoted as csv writes them, then raw bytes:
    never a traceback, and rows read = accepted + rejected."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(NOTES)
    writer.writerows(rows)
    path = tmp_path_factory.mktemp("fuzz") / "clinic.csv"
    path.write_bytes(buffer.getvalue().encode() + raw_tail)
    try:
        result = import_file(path)
    except ContractError as error:
        assert str(path) in str(error)
        return
    assert_counts(result)
    huge = [any(len(cell) > CELL_LIMIT for cell in row) for row in rows]
    if not raw_tail:  # then every written row is one data row, and each huge one rejected
        assert result.rows_read == len(rows)
        too_long = {
            rejected.row
            for rejected in result.rejected
            if any("characters; a cell may have" in issue.rule for issue in rejected.issues)
        }
        assert too_long == {n for n, big in enumerate(huge, start=1) if big}
