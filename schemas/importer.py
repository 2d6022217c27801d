"""Import a clinic export (CSV or Parquet) against the contract, losing nothing.

Every data row ends up either accepted (a :class:`PatientRecord`) or rejected with every
rule it broke, so ``rows_read == accepted + rejected`` always holds. Problems with the file
as a whole (not UTF-8, empty, a required column missing) refuse the whole file with one
:class:`ContractError` that names the file and, where it applies, the line and column.
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
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_text_atomically

QUARANTINE_COLUMNS = ("row", "patient_ref", "column", "value", "rule")
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
    """Validate every row of a contract file; raise :class:`ContractError` for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    payload = path.read_bytes()
    fingerprint = hashlib.sha256(payload).hexdigest()
    if path.suffix.lower() in PARQUET_SUFFIXES:
        header, rows = _read_parquet(path)
    else:
        header, rows = _read_csv(path, payload)
    ignored = _check_header(path, header)
    result = ImportResult(path=path, fingerprint=fingerprint, rows_read=0, ignored_columns=ignored)
    seen_refs: dict[str, int] = {}
    for row_number, (cells, surplus) in enumerate(rows, start=1):
        result.rows_read += 1
        record, issues = validate_row(cells, surplus=surplus)
        ref = (cells.get("patient_ref") or "").strip()
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


# One data row: its cells by column (``None``: a cell the row lacks), and the cells beyond the
# header (CSV only; ``None`` when there are none).
_Row = tuple[dict[str, str | None], list[str] | None]


def _read_csv(path: Path, payload: bytes) -> tuple[list[str], Iterator[_Row]]:
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = payload[: error.start].count(b"\n") + 1
        raise ContractError(
            f"{path}: is not UTF-8 text "
            f"(invalid byte 0x{payload[error.start]:02x} on line {line}); "
            "export the file as UTF-8"
        ) from None
    if not text.strip():
        raise ContractError(f"{path}: the file is empty (a header row and data rows are required)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    return header, _csv_rows(reader)


def _csv_rows(reader: csv.DictReader[str]) -> Iterator[_Row]:
    for row in reader:
        # csv.DictReader files a row's surplus cells, as a list, under the key None (its
        # restkey) and gives the columns a short row lacks None (its restval).
        surplus = row.pop(None, None)
        yield row, surplus if isinstance(surplus, list) else None


def _read_parquet(path: Path) -> tuple[list[str], Iterator[_Row]]:
    import pyarrow.parquet as parquet  # imported here: CSV-only clinics never pay for it

    try:
        table = parquet.read_table(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise ContractError(f"{path}: is not a readable Parquet file ({error})") from None
    header = [name.strip() for name in table.column_names]
    columns = {name: table.column(index).to_pylist() for index, name in enumerate(header)}
    rows = (
        ({name: _cell_text(values[index]) for name, values in columns.items()}, None)
        for index in range(table.num_rows)
    )
    return header, rows


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
