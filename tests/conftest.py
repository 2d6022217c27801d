"""Shared fixtures: contract rows and files written the way clinics export them."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from oralfed.cli.main import main
from oralfed.schemas.contract import CONTRACT_COLUMNS

GOOD_ROW: dict[str, str] = {
    "patient_ref": "p-001",
    "age_years": "40",
    "sex": "female",
    "smoking_status": "never",
    "brushing_per_day": "2",
    "flossing_days_per_week": "3",
    "sugary_drinks_per_day": "1.5",
    "sugary_snacks_per_day": "1",
    "fluoride_toothpaste": "true",
    "fluoridated_water": "yes",
    "dental_visits_per_year": "1",
    "diabetes": "false",
    "bmi": "24.5",
    "last_visit_date": "2025-03-01",
    "dmft": "4",
    "untreated_caries": "false",
    "periodontitis": "mild",
    "consent_tier": "research",
}

WriteCsv = Callable[..., Path]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """The ``oralfed`` command in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def good_rows(count: int) -> list[dict[str, str]]:
    return [{**GOOD_ROW, "patient_ref": f"p-{index:04d}"} for index in range(count)]


@pytest.fixture
def write_csv(tmp_path: Path) -> WriteCsv:
    """Write rows (dicts) to a CSV with the given header (default: the contract's)."""

    def write(
        rows: list[dict[str, str]], header: list[str] | None = None, name: str = "clinic.csv"
    ) -> Path:
        path = tmp_path / name
        columns = header or list(CONTRACT_COLUMNS)
        with path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        return path

    return write
