"""``oralfed federate``: a whole DP federation on this machine, ending in a report."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from oralfed.cli.output import console, error_console, print_json
from oralfed.cli.settings_options import SettingValues, run_setting_options
from oralfed.deploy.clinic_sources import ClinicSource
from oralfed.deploy.errors import FederationStopped
from oralfed.deploy.simulated_run import (
    SimulatedRun,
    SimulatedRunResult,
    new_run_folder,
    resume_simulated_federation,
    run_simulated_federation,
)
from oralfed.deploy.simulation import EventCallback
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.node_config import DEFAULT_EPSILON_CAP
from oralfed.schemas.settings import run_settings
from oralfed.server.checkpoint import resumed_settings, unfinished_checkpoint

# A national dental network is thousands of practices; their synthetic files (about 150 kB
# each) are written to the run folder.
MAX_SYNTHETIC_CLINICS = 10_000
# Up to this many clinics the report lists each; beyond, it summarises them (report.json
# keeps every row).
LISTED_CLINICS = 30


@run_setting_options(exclude=("coordinator_url",))
def federate(
    settings: SettingValues,
    clinics: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_SYNTHETIC_CLINICS,
            help="Synthetic clinics to create (ignored with --data).",
        ),
    ] = 10,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of clinic files, one per clinic; the file name is the clinic id."
        ),
    ] = None,
    epsilon_cap: Annotated[
        float, typer.Option(help="Each clinic's lifetime ε cap (a change is recorded).")
    ] = DEFAULT_EPSILON_CAP,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default runs/<UTC time>); must be new or empty."),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Clinic state (ledgers). Default: <out>/state for synthetic clinics, "
            "<state root>/clinics with --data (ORALFED_HOME, default ~/.oralfed)."
        ),
    ] = None,
    baselines: Annotated[
        bool | None,
        typer.Option(
            help="Train the non-private central-pool and local-only baselines (default: for "
            "synthetic clinics only; with --data they are kept out of report.json)."
        ),
    ] = None,
    declare_sizes: Annotated[
        bool,
        typer.Option(
            help="Each clinic declares its training-set size public (no DP size estimate is "
            "spent; the size is then a public value in reports)."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print report.json instead of tables.")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Run the clinics on this Ray cluster (the address `ray start --head` prints) "
            "instead of a Ray started for the run; RAY_ADDRESS is honoured too. The run "
            "folder must be on a file system every node mounts at the same path.",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            metavar="RUN_DIR",
            help="Continue the run in this folder from its last completed round, with its "
            "clinics and settings (only --min-clinics and --round-timeout may change).",
        ),
    ] = None,
) -> None:
    """Run a differentially private federation of clinics with Flower's Simulation Engine."""
    if resume is not None:
        checkpoint = unfinished_checkpoint(resume.resolve())
        resumed = resumed_settings(checkpoint, resume.resolve(), setting_changes(settings))
        out_dir, rounds, done = resumed.out_dir, resumed.rounds, checkpoint.round

        def start(on_event: EventCallback) -> SimulatedRunResult:
            return resume_simulated_federation(checkpoint, resumed, on_event, ray_address)
    else:
        run = SimulatedRun(
            settings=settings.build(out_dir=new_run_folder(out)),
            source=ClinicSource(clinics, data, state_dir, epsilon_cap=epsilon_cap),
            baselines=baselines,
            declare_sizes=declare_sizes,
            ray_address=ray_address,
        )
        out_dir, rounds, done = run.settings.out_dir, run.settings.rounds, 0

        def start(on_event: EventCallback) -> SimulatedRunResult:
            return run_simulated_federation(
                run,
                notify=console.print,
                on_event=on_event,
                on_baselines=lambda: console.print(
                    "Training baselines (central pool, local-only) on the same data..."
                ),
            )

    try:
        with _round_progress(rounds, done) as on_event:
            result = start(on_event)
    except KeyboardInterrupt:  # the simulation's process group is already stopped
        error_console.print(
            "[bold red]interrupted[/]: the federation and every process it "
            f"started have been stopped; partial results are in {out_dir}"
        )
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    if as_json:
        print_json(result.report)
    else:
        render_report(result.report)
        console.print(
            f"\nRun folder: {out_dir}  (report.json, global_model.pt, history.json, federation.log)"
        )
    if result.report["status"] != "completed":
        raise FederationStopped(f"the federation stopped: {result.report['message']}")


def setting_changes(settings: SettingValues) -> dict[str, Any]:
    """The run settings given a value other than their default: what a resumed run is asked
    to change (a setting left at its default keeps the run's own value)."""
    return {
        item.name: value
        for item in run_settings()
        if (value := settings.given.get(item.name)) is not None
        and item.convert(value) != item.default
    }


@contextmanager
def _round_progress(total: int, done: int = 0) -> Iterator[EventCallback]:
    """A progress bar over the rounds (``done`` already) and one over the clinics that have
    replied within the round, with one line per round summary."""
    progress = Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        TextColumn("{task.fields[unit]} {task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        bar = progress.add_task("Federation", total=total, completed=done, unit="round")
        clinics = progress.add_task("", total=None, visible=False, unit="clinics")

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "progress":
                progress.update(
                    clinics,
                    description=f"round {event['group_id']} {event['message_type']}",
                    completed=event["replied"],
                    total=event["sent"],
                    visible=True,
                )
                return
            if event.get("event") != "round":
                return
            summary = event["summary"]
            progress.update(bar, completed=summary["round"])
            progress.update(clinics, visible=False)
            refused = _some_of([r["clinic"] for r in summary["refused"] + summary["failed"]])
            progress.console.print(
                f"round {summary['round']}: {len(summary['trained'])} clinic(s) trained, "
                f"refused/failed: {refused}" + _evaluation_text(summary.get("evaluation"))
            )

        yield on_event


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
    if len(report["clinics"]) > LISTED_CLINICS:
        _render_clinic_distributions(report["clinics"])
    else:
        _render_clinic_table(report["clinics"])
    final = (report.get("evaluation") or {}).get("final")
    if final:
        console.print(
            "Federated evaluation (DP, at the clinics, "
            f"ε {report['evaluation']['epsilon_per_evaluation']:g} each)"
            + _evaluation_text(final).replace(", federated DP eval", ":")
            + f", accuracy {_fmt(final.get('accuracy'))}"
        )
    if isinstance(report.get("baselines"), str):
        console.print(f"[yellow]Baselines:[/] {report['baselines']}")
    if report.get("dp_engine"):
        console.print(f"Trained with the {report['dp_engine']} DP-SGD engine")
    _render_secure_aggregation(report.get("secure_aggregation") or {})
    refusals = [
        (row["clinic"], refusal) for row in report["clinics"] for refusal in row["refusals"]
    ]
    for clinic, refusal in refusals[:LISTED_CLINICS]:
        console.print(
            f"[yellow]round {refusal['round']}: {clinic} {refusal['status']}[/]: "
            f"{refusal['reason']}"
        )
    if len(refusals) > LISTED_CLINICS:
        console.print(f"[yellow]... and {len(refusals) - LISTED_CLINICS} more[/] (report.json)")


def _render_clinic_table(rows: list[dict[str, Any]]) -> None:
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
    for row in rows:
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


def _render_clinic_distributions(rows: list[dict[str, Any]]) -> None:
    """Many clinics: each figure's spread over the clinics that have it, instead of a row
    per clinic; ε is shown with every δ and accountant the clinics reported."""
    table = Table(
        title=f"Over the {len(rows)} clinics that took part (every clinic's row: report.json)"
    )
    for column in ("figure", "clinics", "min", "10%", "median", "90%", "max"):
        table.add_column(column, justify="right")
    figures: dict[str, list[float | None]] = {
        "rounds trained": [row["rounds_trained"] for row in rows],
        "ε spent": [row.get("epsilon_spent") for row in rows],
        "ε left": [row.get("epsilon_left") for row in rows],
        "federated AUC": [row.get("federated_dp", {}).get("auc") for row in rows],
        "local-only AUC": [row.get("local_only", {}).get("auc") for row in rows],
        "central AUC": [row.get("central_pooled", {}).get("auc") for row in rows],
    }
    for name, values in figures.items():
        present = sorted(v for v in values if v is not None)
        if present:
            shown = [f"{q:g}" if name == "rounds trained" else _fmt(q) for q in _quantiles(present)]
            table.add_row(name, str(len(present)), *shown)
    console.print(table)
    deltas = sorted({f"{row['delta']:g}" for row in rows if row.get("delta")})
    accountants = sorted({row["accountant"] for row in rows if row.get("accountant")})
    refused = sum(1 for row in rows if row["refusals"])
    console.print(
        f"ε at δ {', '.join(deltas) or '-'} ({', '.join(accountants) or '-'} accountant); "
        f"{refused} clinic(s) refused or failed a round"
    )


def _quantiles(ordered: list[float]) -> list[float]:
    """Min, 10 %, median, 90 % and max of a sorted list (nearest rank)."""
    last = len(ordered) - 1
    return [ordered[round(share * last)] for share in (0.0, 0.1, 0.5, 0.9, 1.0)]


def _some_of(clinics: list[str], shown: int = 5) -> str:
    """A round line's clinic list, kept to a line however many clinics there are."""
    if len(clinics) <= shown:
        return ", ".join(clinics) or "none"
    return f"{', '.join(clinics[:shown])} and {len(clinics) - shown} more"


def _render_secure_aggregation(secure: dict[str, Any]) -> None:
    """Say whether the coordinator saw each clinic's update or only the rounds' means."""
    if not secure.get("enabled"):
        return
    rounds = secure.get("rounds") or []
    last = rounds[-1] if rounds else {}
    dropped = sorted({c for r in rounds for c in r.get("dropped_after_key_sharing", [])})
    shares, threshold = last.get("shares", "-"), last.get("reconstruction_threshold", "-")
    console.print(
        "Secure aggregation (SecAgg+): the coordinator saw each round's mean update only; "
        f"{shares} shares per secret, any {threshold} reconstruct it; updates quantised to "
        f"{last.get('quantization_range', '-')} levels "
        f"within ±{last.get('clipping_range', '-')}, weights relative to {secure.get('max_weight')}"
        + (f"; dropped out after sharing keys: {', '.join(dropped)}" if dropped else "")
    )


def _evaluation_text(evaluation: dict[str, Any] | None) -> str:
    """The round's DP evaluation estimate with its interval ("" in rounds without one)."""
    if not evaluation or evaluation.get("auc") is None:
        return ""
    low, high = evaluation.get("auc_95") or (None, None)
    return f", federated DP eval AUC {_fmt(evaluation['auc'])} (95% {_fmt(low)}-{_fmt(high)})"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
