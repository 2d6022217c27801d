"""``oralfed federation``: start, watch and stop runs on the deployed coordinator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.deploy import DEFAULT_FEDERATION_DIR, FederationDir
from cli.federate import render_report
from cli.output import UserError, console, print_json
from cli.run_options import (
    BatchSize,
    ClipNorm,
    DpEngine,
    LearningRate,
    LocalEpochs,
    MinClinics,
    NoiseMultiplier,
    ProximalMu,
    Rounds,
    Strategy,
    TargetEpsilon,
    federation_settings,
    new_run_folder,
)
from schemas.protocol import DEFAULT_DP_ENGINE
from server.launch import launch_run, list_runs, stop_run
from server.provisioning import FederationConfig

app = typer.Typer(help="Run federations on the deployed coordinator.", no_args_is_help=True)

# Flower's log lines an operator wants to see while a run goes on.
PROGRESS_LINE = re.compile(r"\[ROUND|configure_|aggregate_|Waiting for nodes|WARNING|ERROR")


@app.command()
def launch(
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
    rounds: Rounds = 5,
    target_epsilon: TargetEpsilon = None,
    noise_multiplier: NoiseMultiplier = None,
    batch_size: BatchSize = 64,
    local_epochs: LocalEpochs = 2,
    learning_rate: LearningRate = 0.1,
    clip_norm: ClipNorm = 1.0,
    strategy: Strategy = "fedavg",
    proximal_mu: ProximalMu = 0.01,
    dp_engine: DpEngine = DEFAULT_DP_ENGINE,
    min_clinics: MinClinics = 2,
    round_timeout: Annotated[
        float,
        typer.Option(help="Seconds a round waits for replies (and for clinics to connect)."),
    ] = 600.0,
    seed: Annotated[int, typer.Option(help="Seed of the initial model.")] = 7,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder on the coordinator (default runs/<UTC time>); new."),
    ] = None,
    coordinator_url: Annotated[
        str | None, typer.Option(help="Coordinator database URL (default: SQLite in --out).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json at the end.")] = False,
) -> None:
    """Start a run on the SuperLink (`flwr run`), stream its progress, print the report."""
    if not round_timeout > 0:
        raise UserError(f"--round-timeout must be positive, got {round_timeout}")
    FederationConfig.load(federation_dir)  # a clear error before anything starts
    out = new_run_folder(out)
    settings = federation_settings(
        rounds=rounds,
        strategy=strategy,
        proximal_mu=proximal_mu,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        clip_norm=clip_norm,
        target_epsilon=target_epsilon,
        noise_multiplier=noise_multiplier,
        seed=seed,
        min_clinics=min_clinics,
        round_timeout=round_timeout,
        dp_engine=dp_engine,
        out_dir=out.resolve(),
        coordinator_url=coordinator_url,
    )

    def show(line: str) -> None:
        if PROGRESS_LINE.search(line):
            console.print(line.split(":", 1)[-1].strip(), highlight=False, markup=False)

    result = launch_run(federation_dir, settings, show)
    if as_json:
        print_json(result.report)
    else:
        render_report(result.report)
        for clinic in result.report["dropped"]:
            console.print(f"[yellow]dropped out during the run:[/] {clinic}")
        console.print(f"\nRun {result.run_id}: {result.status}. Run folder: {out}")
    if result.status != "completed":
        raise UserError(
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
