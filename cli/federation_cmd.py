"""``oralfed federation``: start, watch and stop runs on the deployed coordinator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from oralfed.cli.deploy import DEFAULT_FEDERATION_DIR, FederationDir
from oralfed.cli.federate import render_report, setting_changes
from oralfed.cli.output import console, print_json
from oralfed.cli.settings_options import SettingValues, run_setting_options
from oralfed.deploy.errors import FederationStopped
from oralfed.deploy.federation_dir import FederationConfig
from oralfed.deploy.launch import launch_run, list_runs, stop_run
from oralfed.deploy.simulated_run import new_run_folder
from oralfed.schemas.settings import FederationSettings, run_settings
from oralfed.server.checkpoint import RESUMABLE_CHANGES, resumed_settings, unfinished_checkpoint

app = typer.Typer(help="Run federations on the deployed coordinator.", no_args_is_help=True)

# Flower's log lines an operator wants to see while a run goes on.
PROGRESS_LINE = re.compile(r"\[ROUND|configure_|aggregate_|Waiting for nodes|WARNING|ERROR")


@app.command()
@run_setting_options(exclude=("task", "hidden_sizes"))
def launch(
    settings: SettingValues,
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder on the coordinator (default runs/<UTC time>); new."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json at the end.")] = False,
) -> None:
    """Start a run on the SuperLink (`flwr run`), stream its progress, print the report."""
    FederationConfig.load(federation_dir)  # a clear error before anything starts
    _run_and_report(federation_dir, settings.build(out_dir=new_run_folder(out)), as_json)


@app.command()
@run_setting_options(
    exclude=tuple(item.name for item in run_settings() if item.name not in RESUMABLE_CHANGES)
)
def resume(
    settings: SettingValues,
    run: Annotated[Path, typer.Argument(help="The run's folder on the coordinator (its --out).")],
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json at the end.")] = False,
) -> None:
    """Continue a run whose coordinator stopped, from its last completed round: clinics
    resend what they already released for a round and pay for no round twice."""
    FederationConfig.load(federation_dir)
    folder = run.resolve()
    checkpoint = unfinished_checkpoint(folder)
    resumed = resumed_settings(checkpoint, folder, setting_changes(settings))
    if not as_json:
        console.print(f"Resuming run {checkpoint.run_id} after round {checkpoint.round}")
    _run_and_report(federation_dir, resumed, as_json)


def _run_and_report(federation_dir: Path, run_settings: FederationSettings, as_json: bool) -> None:
    """Run on the SuperLink, stream its progress, print the report; a run that did not
    complete is a :class:`FederationStopped` error (its report is kept)."""

    def show(line: str) -> None:
        if PROGRESS_LINE.search(line):
            console.print(line.split(":", 1)[-1].strip(), highlight=False, markup=False)

    result = launch_run(federation_dir, run_settings, show)
    if as_json:
        print_json(result.report)
    else:
        render_report(result.report)
        for clinic in result.report["dropped"]:
            console.print(f"[yellow]dropped out during the run:[/] {clinic}")
        console.print(f"\nRun {result.run_id}: {result.status}. Run folder: {run_settings.out_dir}")
    if result.status != "completed":
        raise FederationStopped(
            f"the federation run {result.run_id} ended {result.status}: {result.message}"
        )


@app.command()
def status(
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
    run_id: Annotated[str | None, typer.Option(help="One run only.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Runs on the SuperLink and their status (`flwr ls`)."""
    runs = list_runs(federation_dir, run_id)
    if as_json:
        print_json(runs)
        return
    table = Table(title="Runs")
    for column in ("run id", "status", "elapsed", "created"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            str(run.get("run-id")),
            str(run.get("status")),
            str(run.get("elapsed", "")),
            str(run.get("created-at", "")),
        )
    console.print(table)


@app.command()
def stop(
    run_id: Annotated[str, typer.Argument(help="The run to stop (see `federation status`).")],
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
) -> None:
    """Stop a run on the SuperLink (`flwr stop`)."""
    stop_run(federation_dir, run_id)
    console.print(f"Run {run_id} stopped.")
