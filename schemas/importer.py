"""Import a clinic export (CSV or Parquet) against the contract, losing nothing.

Every data row ends up either accepted (a :class:`PatientRecord`) or rejected with every
rule it broke, so ``rows_read == accepted + rejected`` always holds. Problems with the file
as a whole (not UTF-8, empty, a required column missing) refuse the whole file with one
:class:`ContractError` that names the file and, where it applies, the line and column.

Cells of any size are handled: a cell may hold at most :data:`CELL_LIMIT` (131,072)
characters, in any column, ignored ones included. A row with a longer cell is a rejected
row naming the row, the column and the length, and a CSV cell is never held in memory past
the limit (:mod:`oralfed.schemas.csv_reader`); a quote that is never closed rejects the row
it opens in. So no file, whatever it holds, ends an import with anything but a report or a
:class:`ContractError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from oralfed.schemas.contract import CONTRACT_COLUMNS, REQUIRED_COLUMNS, PatientRecord
from oralfed.schemas.csv_reader import CELL_LIMIT, CsvFileError, CsvRecord, CsvSource
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_text_atomically

QUARANTINE_COLUMNS = ("row", "patient_ref", "column", "value", "rule")
# The widest header a file may have; a data row's cells past its header are counted, and
# only this many of them kept, to show what the row has too many of.
MAX_COLUMNS = 4_096
SURPLUS_SHOWN = 8
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


class ContractError(OralFedError):
    """A file that cannot be imported at all; the message names the file and the place."""

    exit_code = ExitCode.INVALID_DATA


@dataclass(frozen=True)
class RowIssue:
    """One broken rule: the column, the value as written, and what the contract requires."""

    column: str
    value: str
    rule: str


@dataclass(frozen=True)
class RejectedRow:
    row: int  # 1 = first data row, as in the contract
    patient_ref: str
    issues: tuple[RowIssue, ...]


@dataclass
class ImportResult:
    """The outcome of importing one file; ``report()`` is what users and the audit log see."""

    path: Path
    fingerprint: str
    rows_read: int
    accepted: list[PatientRecord] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def rows_accepted(self) -> int:
        return len(self.accepted)

    @property
    def rows_rejected(self) -> int:
        return len(self.rejected)

    def report(self) -> dict[str, Any]:
        by_consent: dict[str, int] = {}
        for record in self.accepted:
            by_consent[record.consent_tier.value] = by_consent.get(record.consent_tier.value, 0) + 1
        return {
            "file": str(self.path),
            "sha256": self.fingerprint,
            "rows_read": self.rows_read,
            "rows_accepted": self.rows_accepted,
            "rows_rejected": self.rows_rejected,
            "ignored_columns": list(self.ignored_columns),
            "accepted_by_consent_tier": dict(sorted(by_consent.items())),
            "rejected": [
                {
                    "row": rejected.row,
                    "patient_ref": rejected.patient_ref,
                    "issues": [issue.__dict__ for issue in rejected.issues],
                }
                for rejected in self.rejected
            ],
        }


def import_file(path: Path | str) -> ImportResult:
    """Validate every row of a contract file; raise :class:`ContractError` for a bad file.

    A CSV file is read in chunks and no cell is held past :data:`CELL_LIMIT` characters
    (see :mod:`oralfed.schemas.csv_reader`): a row with a longer cell, in any column, is a
    rejected row naming the row, the column and the cell's length. A Parquet cell past the
    limit is rejected the same way.
    """
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    try:
        with path.open("rb") as stream:
            if path.suffix.lower() in PARQUET_SUFFIXES:
                fingerprint = hashlib.file_digest(stream, "sha256").hexdigest()
                header, rows = _read_parquet(path)
                result = _import_rows(path, header, rows)
            else:
                source = CsvSource(path, stream, keep=MAX_COLUMNS)
                header, rows = _read_csv(path, source)
                result = _import_rows(path, header, rows)
                fingerprint = source.fingerprint
    except CsvFileError as error:
        raise ContractError(str(error)) from None
    except OSError as error:
        raise ContractError(f"{path}: cannot be read ({error.strerror or error})") from None
    result.fingerprint = fingerprint
    return result


def _import_rows(path: Path, header: list[str], rows: Iterator[_Row]) -> ImportResult:
    ignored = _check_header(path, header)
    result = ImportResult(path=path, fingerprint="", rows_read=0, ignored_columns=ignored)
    seen_refs: dict[str, int] = {}
    for row_number, row in enumerate(rows, start=1):
        result.rows_read += 1
        issues = _cell_issues(row)
        record, row_issues = (None, []) if issues else validate_row(row.cells, surplus=row.surplus)
        issues += row_issues
        ref = (row.cells.get("patient_ref") or "").strip()
        if ref:
            if ref in seen_refs:
                issues.append(
                    RowIssue(
                        "patient_ref", ref, f"duplicates the patient_ref of row {seen_refs[ref]}"
                    )
                )
            else:
                seen_refs[ref] = row_number
        if issues or record is None:
            result.rejected.append(RejectedRow(row_number, ref, tuple(issues)))
        else:
            result.accepted.append(record)
    if result.rows_read == 0:
        raise ContractError(f"{path}: has a header row but no data rows")
    return result


def _cell_issues(row: _Row) -> list[RowIssue]:
    """What makes a row unreadable before any rule applies: a cell past the limit, a quote
    the file never closes."""
    issues = [
        RowIssue(column, "", f"has {length:,} characters; a cell may have at most {CELL_LIMIT:,}")
        for column, length in row.too_long.items()
    ]
    if row.unterminated is not None:
        issues.append(
            RowIssue(
                row.unterminated,
                "",
                "opens a quote that is never closed: the rest of the file was read as this cell",
            )
        )
    return issues


def validate_row(
    cells: Mapping[str, str | None], *, surplus: Sequence[str] | None = None
) -> tuple[PatientRecord | None, list[RowIssue]]:
    """Validate one row of cells; return the record or every issue found in it.

    ``surplus`` are the cells of a CSV row beyond its header (``None``: there were none).
    """
    if surplus is not None:
        return None, [RowIssue("(row)", ",".join(surplus), "has more cells than the header")]
    values = {
        column: text.strip()
        for column in CONTRACT_COLUMNS
        if (text := cells.get(column)) is not None and text.strip() != ""
    }
    try:
        return PatientRecord.model_validate(values), []
    except ValidationError as error:
        issues = []
        for problem in error.errors():
            column = str(problem["loc"][0]) if problem["loc"] else "(row)"
            issues.append(RowIssue(column, values.get(column, ""), _rule_text(problem)))
        return None, issues


def write_quarantine(result: ImportResult, destination: Path) -> Path:
    """Write rejected rows (one line per broken rule) atomically; returns the path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(QUARANTINE_COLUMNS)
    for rejected in result.rejected:
        for issue in rejected.issues:
            writer.writerow(
                (rejected.row, rejected.patient_ref, issue.column, issue.value, issue.rule)
            )
    write_text_atomically(destination, buffer.getvalue())
    return destination


def default_quarantine_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.quarantine.csv")


def _rule_text(problem: Mapping[str, Any]) -> str:
    kind = problem["type"]
    if kind == "missing":
        return "required value is missing"
    if kind == "enum":
        return f"must be one of: {problem['ctx']['expected']}"
    if kind == "string_pattern_mismatch":
        return "must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'"
    if kind in ("int_parsing", "int_from_float"):
        return "must be a whole number"
    if kind == "greater_than_equal":
        return f"must be at least {problem['ctx']['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {problem['ctx']['le']}"
    if kind == "float_parsing":
        return "must be a number (use '.' as the decimal mark)"
    message = str(problem["msg"]).removeprefix("Value error, ")
    return message[0].lower() + message[1:]


@dataclass(frozen=True)
class _Row:
    """One data row: its cells by column (``None``: a cell the row lacks), the cells beyond
    the header (CSV only; ``None`` when there are none), the columns whose cell is past
    :data:`CELL_LIMIT` with its length, and the column of a quote never closed."""

    cells: dict[str, str | None]
    surplus: list[str] | None = None
    too_long: dict[str, int] = field(default_factory=dict)
    unterminated: str | None = None


def _read_csv(path: Path, source: CsvSource) -> tuple[list[str], Iterator[_Row]]:
    records = source.records()
    first = next(records, None)
    if first is None or not any(cell.strip() for cell in first.cells):
        raise ContractError(f"{path}: the file is empty (a header row and data rows are required)")
    if first.width > MAX_COLUMNS:
        raise ContractError(
            f"{path}: header line 1 has {first.width:,} columns; a file may have at most "
            f"{MAX_COLUMNS:,}"
        )
    if first.too_long:
        column = min(first.too_long) + 1
        raise ContractError(
            f"{path}: header line 1, column {column}, is longer than {CELL_LIMIT:,} characters"
        )
    header = [name.strip() for name in first.cells]
    # Kept beyond the header: enough cells to show what a row has too many of.
    source.keep = len(header) + SURPLUS_SHOWN
    return header, _csv_rows(header, records)


def _csv_rows(header: list[str], records: Iterator[CsvRecord]) -> Iterator[_Row]:
    width = len(header)
    for record in records:
        cells: dict[str, str | None] = dict.fromkeys(header)
        cells.update(zip(header, record.cells, strict=False))
        surplus = None
        if record.width > width:
            surplus = record.cells[width:]
            if record.width > len(record.cells):
                surplus.append(f"… ({record.width - width} cells in all)")
        yield _Row(
            cells,
            surplus,
            too_long={_column(header, i): n for i, n in record.too_long.items()},
            unterminated=_column(header, record.width - 1) if record.unterminated else None,
        )


def _column(header: list[str], index: int) -> str:
    return header[index] if index < len(header) else f"(cell {index + 1})"


def _read_parquet(path: Path) -> tuple[list[str], Iterator[_Row]]:
    import pyarrow.parquet as parquet  # imported here: CSV-only clinics never pay for it

    try:
        table = parquet.read_table(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise ContractError(f"{path}: is not a readable Parquet file ({error})") from None
    header = [name.strip() for name in table.column_names]
    columns = {name: table.column(index).to_pylist() for index, name in enumerate(header)}
    return header, (_parquet_row(columns, index) for index in range(table.num_rows))


def _parquet_row(columns: dict[str, list[Any]], index: int) -> _Row:
    cells = {name: _cell_text(values[index]) for name, values in columns.items()}
    too_long = {
        name: len(text)
        for name, text in cells.items()
        if text is not None and len(text) > CELL_LIMIT
    }
    kept = {name: "" if name in too_long else text for name, text in cells.items()}
    return _Row(kept, None, too_long)


def _cell_text(value: Any) -> str | None:
    """Render a typed Parquet cell the way the CSV contract writes it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _check_header(path: Path, header: list[str]) -> list[str]:
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise ContractError(f"{path}: header line 1 repeats column(s): {', '.join(duplicates)}")
    known = [name for name in header if name in CONTRACT_COLUMNS]
    if not known:
        raise ContractError(
            f"{path}: is not an OralFed contract file: header line 1 has none of the contract's "
            f"columns (found: {', '.join(header) or 'nothing'})"
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ContractError(
            f"{path}: header line 1 is missing required column(s): {', '.join(missing)}"
        )
    return [name for name in header if name not in CONTRACT_COLUMNS]
