"""``oralfed data``: validate a clinic export, synthesize demo clinics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from oralfed.cli.output import console, print_json
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.importer import (
    ImportResult,
    default_quarantine_path,
    import_file,
    write_quarantine,
)
from oralfed.schemas.synthetic import write_federation

app = typer.Typer(
    help="Validate clinic data against the contract; generate synthetic clinics.",
    no_args_is_help=True,
)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="A contract CSV or Parquet file.")],
    quarantine: Annotated[
        Path | None,
        typer.Option(
            help="Where rejected rows go (default: FILE's folder, <name>.quarantine.csv)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    max_issues: Annotated[int, typer.Option(help="Rejected rows listed in the table.")] = 20,
) -> None:
    """Validate FILE: rows read = accepted + rejected; rejected rows go to a quarantine file.

    A cell may hold at most 131,072 characters, in any column, ignored ones too: a row with a
    longer cell is rejected, naming the row and the column.
    """
    result = import_file(file)
    report = result.report()
    if result.rejected:
        report["quarantine_file"] = str(
            write_quarantine(result, quarantine or default_quarantine_path(file))
        )
    if as_json:
        print_json(report)
    else:
        render_import_report(result, report.get("quarantine_file"), max_issues)
    if result.rows_accepted == 0:  # nothing usable: the file is, in effect, invalid data
        raise typer.Exit(ExitCode.INVALID_DATA)


def render_import_report(
    result: ImportResult, quarantine_file: str | None, max_issues: int
) -> None:
    summary = Table(title=f"Import report: {result.path}", show_header=False)
    summary.add_row("rows read", str(result.rows_read))
    summary.add_row("rows accepted", f"[green]{result.rows_accepted}[/]")
    summary.add_row(
        "rows rejected", f"[red]{result.rows_rejected}[/]" if result.rows_rejected else "0"
    )
    consent = result.report()["accepted_by_consent_tier"]
    summary.add_row(
        "accepted by consent tier", ", ".join(f"{k}: {v}" for k, v in consent.items()) or "-"
    )
    summary.add_row("ignored columns", ", ".join(result.ignored_columns) or "-")
    if quarantine_file:
        summary.add_row("quarantine file", quarantine_file)
    console.print(summary)
    if not result.rejected:
        return
    issues = Table(title="Rejected rows", show_lines=False)
    for column in ("row", "patient_ref", "column", "value", "rule"):
        issues.add_column(column)
    shown = 0
    for rejected in result.rejected:
        for issue in rejected.issues:
            if shown == max_issues:
                break
            issues.add_row(
                str(rejected.row), rejected.patient_ref, issue.column, issue.value, issue.rule
            )
            shown += 1
    console.print(issues)
    total = sum(len(r.issues) for r in result.rejected)
    if total > shown:
        console.print(f"... and {total - shown} more issue(s); all are in the quarantine file.")


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder for the clinic CSV files.")],
    clinics: Annotated[int, typer.Option(min=1, max=200, help="Number of clinics.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 7,
    bad_rows: Annotated[
        float,
        typer.Option(min=0.0, max=0.5, help="Share of rows given one contract violation each."),
    ] = 0.0,
) -> None:
    """Write one synthetic contract CSV per clinic (see docs/data.md for the model)."""
    paths = write_federation(out, clinics, seed, bad_rows)
    for path in paths:
        console.print(f"wrote {path}")
