"""``oralfed federate``: a whole DP federation on this machine, ending in a report."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.output import UserError, console, error_console, print_json
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
from client.data import load_clinic_data, training_records
from client.model import load_model
from client.node import DEFAULT_EPSILON_CAP, ClinicNode
from schemas import protocol
from schemas.contract import PATIENT_REF_PATTERN
from schemas.features import Task
from schemas.importer import ImportResult, import_file, write_quarantine
from schemas.synthetic import write_federation
from server.app import GLOBAL_MODEL_FILE
from server.baselines import compare_with_baselines
from server.report import build_report
from server.settings import FederationSettings
from server.simulation import launch_simulation

REPORT_FILE = "report.json"
CLINIC_FILE_SUFFIXES = (".csv", ".parquet", ".pq")


def federate(
    clinics: Annotated[
        int, typer.Option(min=1, max=50, help="Synthetic clinics to create (ignored with --data).")
    ] = 10,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of clinic files, one per clinic; the file name is the clinic id."
        ),
    ] = None,
    rounds: Rounds = 5,
    target_epsilon: TargetEpsilon = None,
    noise_multiplier: NoiseMultiplier = None,
    batch_size: BatchSize = 64,
    local_epochs: LocalEpochs = 2,
    learning_rate: LearningRate = 0.1,
    clip_norm: ClipNorm = 1.0,
    strategy: Strategy = "fedavg",
    proximal_mu: ProximalMu = 0.01,
    dp_engine: DpEngine = protocol.DEFAULT_DP_ENGINE,
    min_clinics: MinClinics = 2,
    epsilon_cap: Annotated[
        float,
        typer.Option(
            help="Each clinic's lifetime ε cap (a change is recorded).",
        ),
    ] = DEFAULT_EPSILON_CAP,
    task: Annotated[Task, typer.Option(help="Outcome to learn.")] = Task.UNTREATED_CARIES,
    seed: Annotated[int, typer.Option(help="Seed for synthetic data and initial model.")] = 7,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default runs/<UTC time>); must be new or empty."),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Clinic state (ledgers). Default: <out>/state for synthetic clinics, "
            ".oralfed/state with --data."
        ),
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="Train the central-pool and local-only baselines for the report.")
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print report.json instead of tables.")
    ] = False,
) -> None:
    """Run a differentially private federation of clinics with Flower's Simulation Engine."""
    if not epsilon_cap > 0:
        raise UserError(f"--epsilon-cap must be positive, got {epsilon_cap}")
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
        task=task,
        dp_engine=dp_engine,
        out_dir=out.resolve(),
    )
    state_root = (
        state_dir or (out / "state" if data is None else Path(".oralfed/state"))
    ).resolve()
    if data is None:
        files = write_federation(out / "data", clinics, seed)
        console.print(f"Synthesized {len(files)} clinics in {out / 'data'} (seed {seed})")
    else:
        files = _clinic_files(data)
    checked = [_check_clinic_file(path, task) for path in files]  # refuses before writing
    out.mkdir(parents=True, exist_ok=True)
    nodes = [_clinic_node(result, state_root, epsilon_cap, out, task) for result in checked]
    if len(nodes) < min_clinics:
        raise UserError(f"{len(nodes)} clinic(s) found, fewer than --min-clinics {min_clinics}")

    try:
        result = _run_with_progress(nodes, settings)
    except KeyboardInterrupt:  # the simulation's process group is already stopped
        error_console.print(
            "[bold red]interrupted[/]: the federation and every process it "
            f"started have been stopped; partial results are in {out}"
        )
        raise typer.Exit(130) from None
    comparison = None
    model_path = out / GLOBAL_MODEL_FILE
    if result.status == "completed" and baselines:
        with console.status("Training baselines (central pool, local-only) on the same data..."):
            model, _, _ = load_model(model_path)
            comparison = compare_with_baselines(nodes, model, task, settings.hidden_sizes, seed)
    report = build_report(
        run_id=result.run_id,
        status=result.status,
        message=result.message,
        settings=settings.public_dict(),
        rounds=result.rounds,
        comparison=comparison,
    )
    report["model_file"] = str(model_path) if model_path.exists() else None
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    if as_json:
        print_json(report)
    else:
        render_report(report)
        console.print(
            f"\nRun folder: {out}  (report.json, global_model.pt, history.json, federation.log)"
        )
    if result.status != "completed":
        raise UserError(f"the federation stopped: {result.message}")


def _clinic_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"--data {folder}: not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in CLINIC_FILE_SUFFIXES and p.is_file()
    )
    if not files:
        raise UserError(f"--data {folder}: no clinic files (*.csv, *.parquet) in it")
    for path in files:
        if not re.match(PATIENT_REF_PATTERN, path.stem):
            raise UserError(
                f"{path}: the file name must be a clinic id of A-Z, a-z, 0-9, '_' or '-'"
            )
    return files


def _check_clinic_file(path: Path, task: Task) -> ImportResult:
    """Validate a clinic's file up front, so bad input is reported before any round starts."""
    result = import_file(path)
    load_clinic_data(path.stem, path, task)  # refuses a clinic with no usable research-tier rows
    return result


def _clinic_node(
    result: ImportResult, state_root: Path, epsilon_cap: float, out: Path, task: Task
) -> ClinicNode:
    path = result.path
    if result.rejected:
        quarantine = write_quarantine(result, out / "quarantine" / f"{path.stem}.quarantine.csv")
        console.print(
            f"[yellow]{path}: {result.rows_rejected} of {result.rows_read} rows rejected[/] "
            f"(reasons in {quarantine})"
        )
    usable = len(training_records(result, task))
    console.print(
        f"{path.stem}: {result.rows_accepted} rows accepted, "
        f"{usable} research-tier rows for {task.value}"
    )
    return ClinicNode(
        clinic_id=path.stem,
        data_path=path.resolve(),
        state_dir=state_root / path.stem,
        dataset_id=path.stem,
        epsilon_cap=epsilon_cap,
    )


def _run_with_progress(nodes: list[ClinicNode], settings: FederationSettings) -> Any:
    assert settings.out_dir is not None
    progress = Progress(
        TextColumn("[bold]Federation[/]"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        bar = progress.add_task("rounds", total=settings.rounds)

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") != "round":
                return
            summary = event["summary"]
            progress.update(bar, completed=summary["round"])
            auc = summary.get("eval_auc")
            refused = (
                ", ".join(r["clinic"] for r in summary["refused"] + summary["failed"]) or "none"
            )
            progress.console.print(
                f"round {summary['round']}: {len(summary['trained'])} clinic(s) trained, "
                f"refused/failed: {refused}, train loss {_fmt(summary.get('train_loss'))}, "
                f"federated eval AUC {_fmt(auc)}"
            )

        return launch_simulation(nodes, settings.public_dict(), settings.out_dir, on_event)


def render_report(report: dict[str, Any]) -> None:
    overall = report.get("overall")
    if overall:
        table = Table(title="Model quality on the clinics' pooled test splits")
        for column in ("model", "AUC", "accuracy"):
            table.add_column(column)
        table.add_row(
            "federated, DP (this run)",
            _fmt(overall["federated_dp"]["auc"]),
            _fmt(overall["federated_dp"]["accuracy"]),
        )
        table.add_row(
            "central pool, non-private (baseline)",
            _fmt(overall["central_pooled"]["auc"]),
            _fmt(overall["central_pooled"]["accuracy"]),
        )
        table.add_row(
            "local-only, mean over clinics (baseline)", _fmt(overall["local_only_mean_auc"]), ""
        )
        console.print(table)
    clinics = Table(title="Per clinic: test AUC of each model, and privacy budget")
    for column in (
        "clinic",
        "rounds",
        "federated",
        "local",
        "central",
        "ε spent/cap",
        "δ",
        "acct.",
    ):
        clinics.add_column(column)
    for row in report["clinics"]:
        spent, cap = row.get("epsilon_spent"), row.get("epsilon_cap")
        clinics.add_row(
            row["clinic"],
            str(row["rounds_trained"]),
            _fmt(row.get("federated_dp", {}).get("auc")),
            _fmt(row.get("local_only", {}).get("auc")),
            _fmt(row.get("central_pooled", {}).get("auc")),
            "-" if spent is None else f"{spent:.2f}/{cap:g}",
            f"{row['delta']:.0e}" if row.get("delta") else "-",
            row.get("accountant") or "-",
        )
    console.print(clinics)
    if report.get("dp_engine"):
        console.print(f"Trained with the {report['dp_engine']} DP-SGD engine")
    for row in report["clinics"]:
        for refusal in row["refusals"]:
            console.print(
                f"[yellow]round {refusal['round']}: {row['clinic']} {refusal['status']}[/]: "
                f"{refusal['reason']}"
            )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
