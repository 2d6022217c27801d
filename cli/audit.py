"""``oralfed audit``: check the signed audit log, export it, and report privacy budgets.

Exit codes: 0 verified / done; 1 the log failed verification (the output says which entry
and why); 2 the command could not run (bad option, unreadable file, wrong key format).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from sqlalchemy import URL
from sqlalchemy.exc import SQLAlchemyError

from cli.output import UserError, console, error_console, print_json
from client.data import ClinicData, load_clinic_data
from privacy.accountants import ACCOUNTANTS, DEFAULT_ACCOUNTANT
from privacy.audit import (
    AuditEntry,
    AuditError,
    AuditFailure,
    VerificationResult,
    cross_check_ledger,
    json_safe,
    read_database_log,
    read_export,
    verify_entries,
    write_export,
)
from privacy.budget_report import DatasetBudgetReport, ledger_reports, reported_budgets
from privacy.calibration import default_delta
from privacy.keys import PUBLIC_KEY_FILE, AuditKeyError, load_public_key
from privacy.ledger import PrivacyLedger
from schemas.features import Task
from schemas.protocol import DEFAULT_DP_ENGINE, DP_ENGINES
from schemas.synthetic import write_federation
from server.settings import FederationSettings

if TYPE_CHECKING:  # torch is imported only when an empirical audit runs
    from client.training import DpRoundPlan

app = typer.Typer(
    help="Verify and export the signed audit log; report privacy budgets.", no_args_is_help=True
)

# A clinic's log lives in its ledger; the coordinator's in its own database.
LOG_DATABASES = ("ledger.db", "coordinator.db")

StateDirOption = Annotated[
    Path | None,
    typer.Option(help="The node's state directory (holds ledger.db or coordinator.db)."),
]


PLATFORM = FederationSettings()  # the defaults a federation trains with


class ExportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


def log_database(state_dir: Path) -> Path:
    """The database holding the node's audit log; :class:`UserError` if there is none."""
    if not state_dir.is_dir():
        raise UserError(f"--state-dir {state_dir}: no such directory")
    for name in LOG_DATABASES:
        if (state_dir / name).is_file():
            return state_dir / name
    raise UserError(f"--state-dir {state_dir}: holds neither {' nor '.join(LOG_DATABASES)}")


def load_log(
    state_dir: Path | None, export_file: Path | None, public_key: Path | None
) -> tuple[list[AuditEntry], str, Path | str]:
    """Entries, where they came from, and the key to check them with (a file, or the
    export's embedded key)."""
    if (state_dir is None) == (export_file is None):
        raise UserError("give exactly one of --state-dir and --file")
    try:
        if export_file is not None:
            entries, _ = read_export(export_file)
            return entries, str(export_file), public_key or "embedded"
        assert state_dir is not None
        database = log_database(state_dir)
        return read_database_log(database), str(database), public_key or state_dir / PUBLIC_KEY_FILE
    except (AuditError, AuditKeyError) as error:
        raise UserError(str(error)) from None


@app.command()
def verify(
    state_dir: StateDirOption = None,
    export_file: Annotated[
        Path | None, typer.Option("--file", help="An exported JSON log, instead of a state dir.")
    ] = None,
    expect_head: Annotated[
        str | None,
        typer.Option(help="A head hash printed by an earlier verify: it must still be there."),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="The node's public key as the auditor received it (PEM)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check every entry's hash, signature and chain link; exit 1 naming each failure."""
    entries, source, key_source = load_log(state_dir, export_file, public_key)
    try:
        if key_source == "embedded":
            assert export_file is not None
            key = read_export(export_file)[1]
        else:
            key = load_public_key(Path(key_source))
    except (AuditError, AuditKeyError) as error:
        raise UserError(str(error)) from None
    result = verify_entries(entries, key, expect_head=expect_head)
    if source.endswith("ledger.db"):
        result = replace(
            result, failures=result.failures + tuple(_ledger_mismatches(Path(source), entries))
        )
    if as_json:
        print_json({"source": source, "public_key": str(key_source), **result.to_dict()})
    else:
        _render_verification(result, source, str(key_source))
    if not result.ok:
        raise typer.Exit(1)


def _ledger_mismatches(path: Path, entries: Sequence[AuditEntry]) -> list[AuditFailure]:
    """Where the clinic's ledger rows disagree with its (verified or not) audit log."""
    try:
        with PrivacyLedger(URL.create("sqlite", database=str(path))) as ledger:
            budgets = ledger.datasets()
            charges = [c for b in budgets for c in ledger.history(b.dataset_id)]
    except (SQLAlchemyError, ValueError) as error:
        return [AuditFailure(0, None, "ledger-mismatch", f"the ledger cannot be read: {error}")]
    return cross_check_ledger(entries, charges, budgets)


def _render_verification(result: VerificationResult, source: str, key_source: str) -> None:
    key_note = (
        "the key embedded in the export (pass --public-key with the key you received from "
        "the node to rule out a re-signed copy)"
        if key_source == "embedded"
        else key_source
    )
    console.print(f"audit log: {source}", highlight=False)
    console.print(f"checked with: {key_note} (key {result.signer[:16]}…)", highlight=False)
    if not result.ok:
        error_console.print(
            f"[bold red]NOT VERIFIED[/]: {len(result.failures)} problem(s) in "
            f"{result.entries} entries",
            highlight=False,
        )
        for failure in result.failures:
            error_console.print(f"  - {failure}", highlight=False, soft_wrap=True)
        return
    if result.entries == 0:
        console.print("[yellow]the log is empty[/]: nothing to verify")
    console.print(
        f"[bold green]VERIFIED[/]: {result.entries} entries, every hash, signature and link intact",
        highlight=False,
    )
    console.print(
        f"head: entry {result.head_seq}, hash {result.head_hash}\n"
        "Record this hash elsewhere; `oralfed audit verify --expect-head HASH` later proves "
        "that no entry up to it was removed.",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="File to write.")],
    state_dir: Annotated[
        Path, typer.Option(help="The node's state directory (holds ledger.db or coordinator.db).")
    ],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="json or csv.")] = (
        ExportFormat.JSON
    ),
) -> None:
    """Export the log for an external auditor, with the public key that verifies it."""
    entries, source, key_path = load_log(state_dir, None, None)
    try:
        key = load_public_key(Path(key_path))
        written = write_export(out, entries, key, fmt=fmt.value, source=source)
    except (AuditKeyError, OSError) as error:
        raise UserError(f"cannot export to {out}: {error}") from None
    result = verify_entries(entries, key)
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    status = "verified" if result.ok else f"NOT verified ({len(result.failures)} problem(s))"
    console.print(
        f"{result.entries} entries, {status}; head hash {result.head_hash}", highlight=False
    )


@app.command()
def budget(
    state_dir: Annotated[
        Path,
        typer.Option(
            help="A clinic's state directory (ledger.db), or the coordinator's run folder "
            "(coordinator.db: the federation-wide view as reported by the clinics)."
        ),
    ],
    dataset: Annotated[str | None, typer.Option(help="Only this data set id.")] = None,
    by_round: Annotated[
        bool, typer.Option("--by-round", help="Cumulative ε after each charge.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG chart of ε over time against the cap.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """ε spent and remaining per data set, recomputed from the ledger's whole history."""
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot must name a .png file, got {plot}")
    if not (state_dir / "ledger.db").is_file() and (state_dir / "coordinator.db").is_file():
        _federation_budgets(state_dir, as_json=as_json)
        return
    reports = _budget_reports(state_dir, dataset, by_round=by_round or plot is not None)
    if plot is not None:
        plot_budgets(reports, plot)
    if as_json:
        print_json([report.to_dict() for report in reports])
        return
    for report in reports:
        _render_budget(report, by_round=by_round)
    if plot is not None:
        console.print(f"wrote {plot}", highlight=False)


def _federation_budgets(state_dir: Path, *, as_json: bool) -> None:
    """The coordinator's view: what each clinic last reported, clearly labelled as such."""
    entries, source, key_path = load_log(state_dir, None, None)
    try:
        verified = verify_entries(entries, load_public_key(Path(key_path))).ok
    except AuditKeyError as error:
        raise UserError(str(error)) from None
    budgets = reported_budgets(entries)
    if as_json:
        print_json(
            {
                "source": source,
                "reported_by_clinics": True,
                "coordinator_log_verified": verified,
                "clinics": [json_safe(vars(budget)) for budget in budgets],
            }
        )
        return
    table = Table(
        title="privacy budgets AS REPORTED BY THE CLINICS (the coordinator holds no ledger: "
        "each clinic's own `oralfed audit budget` is authoritative)"
    )
    for column in ("clinic", "ε spent", "ε cap", "δ", "accountant", "last run / round", "refused"):
        table.add_column(column)
    for budget in budgets:
        table.add_row(
            budget.clinic_id,
            f"{budget.epsilon_spent:.4f}",
            f"{budget.epsilon_cap:g}",
            f"{budget.delta:g}",
            budget.accountant,
            f"{budget.run_id[:8]} / {budget.round}",
            str(budget.refusals),
        )
    console.print(table)
    status = "verified" if verified else "[red]NOT verified[/] (run `oralfed audit verify`)"
    console.print(f"from the coordinator's signed log {source}: {status}", highlight=False)


def _budget_reports(
    state_dir: Path, dataset: str | None, *, by_round: bool
) -> list[DatasetBudgetReport]:
    path = state_dir / "ledger.db"
    if not path.is_file():
        raise UserError(f"--state-dir {state_dir}: no ledger.db (is this a clinic's state dir?)")
    try:
        with PrivacyLedger(URL.create("sqlite", database=str(path))) as ledger:
            reports = ledger_reports(ledger, dataset, by_round=by_round)
    except SQLAlchemyError as error:
        reason = getattr(error, "orig", None) or error
        raise UserError(f"{path}: not a readable ledger database ({reason})") from None
    if not reports:
        raise UserError(f"{path}: no data set is registered in this ledger")
    return reports


def _render_budget(report: DatasetBudgetReport, *, by_round: bool) -> None:
    summary = Table(show_header=False, title=f"privacy budget: {report.dataset_id}")
    mechanisms = "; ".join(
        f"{use.mechanism} σ={use.noise_multiplier:g}"
        + (f" q={use.sample_rate:g}" if use.sample_rate is not None else "")
        + f", {use.repetitions} times in {use.charges} charge(s)"
        for use in report.mechanisms
    )
    for label, value in (
        ("ε spent", f"{report.spent:.4f}"),
        ("ε remaining", f"{report.remaining:.4f}"),
        ("ε cap", f"{report.epsilon_cap:g}"),
        ("δ", f"{report.delta:g}"),
        ("accountant", report.accountant),
        ("charges", str(report.charges)),
        ("mechanisms composed", mechanisms or "none"),
    ):
        summary.add_row(label, value)
    console.print(summary)
    if not by_round:
        return
    table = Table(title=f"cumulative ε after each charge ({report.accountant}, δ={report.delta:g})")
    for column in ("charge", "recorded (UTC)", "run", "round", "mechanism", "ε", "receipt", "cap"):
        table.add_column(column)
    for point in report.points:
        table.add_row(
            str(point.charge_id),
            point.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
            point.run_id,
            "" if point.round is None else str(point.round),
            f"{point.mechanism} σ={point.noise_multiplier:g}",
            f"{point.epsilon:.4f}",
            "ok" if point.receipt_matches else f"[red]MISMATCH {point.epsilon_recorded:.4f}[/]",
            f"{point.epsilon_cap:g}",
        )
    console.print(table)


def plot_budgets(reports: Sequence[DatasetBudgetReport], path: Path) -> None:
    """A PNG of cumulative ε over time per data set, with each data set's cap in force."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a clinic server
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    try:
        for report in reports:
            times = [point.recorded_at for point in report.points]
            line = axes.step(
                times,
                [point.epsilon for point in report.points],
                where="post",
                marker="o",
                label=f"{report.dataset_id}: ε spent ({report.accountant}, δ={report.delta:g})",
            )[0]
            axes.step(
                times,
                [point.epsilon_cap for point in report.points],
                where="post",
                linestyle="--",
                color=line.get_color(),
                label=f"{report.dataset_id}: cap",
            )
        axes.set_xlabel("time of charge (UTC)")
        axes.set_ylabel("ε")
        highest = max(
            (max(p.epsilon, p.epsilon_cap) for report in reports for p in report.points),
            default=1.0,
        )
        axes.set_ylim(0, highest * 1.15)
        axes.legend(loc="lower right", fontsize="small")
        axes.set_title("Privacy budget spent over time")
        figure.autofmt_xdate()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise UserError(f"--plot {path}: cannot write ({error.strerror})") from None
    finally:
        plt.close(figure)


@app.command()
def empirical(
    data: Annotated[
        Path | None,
        typer.Option(help="The clinic's export to audit on (default: a synthetic clinic)."),
    ] = None,
    task: Annotated[Task, typer.Option(help="Outcome to learn.")] = PLATFORM.task,
    canaries: Annotated[int, typer.Option(help="Canary records m, each included w.p. ½.")] = 500,
    guesses: Annotated[
        int, typer.Option(help="k: guess 'included' for the top k and 'excluded' for the bottom k.")
    ] = 25,
    target_epsilon: Annotated[
        float | None,
        typer.Option(help="ε of the audited training (calibrates σ, as a clinic does)."),
    ] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="Fixed σ instead.")] = None,
    batch_size: Annotated[int, typer.Option(help="Expected batch size.")] = PLATFORM.batch_size,
    local_epochs: Annotated[int, typer.Option(help="Epochs.")] = PLATFORM.local_epochs,
    learning_rate: Annotated[float, typer.Option(help="SGD rate.")] = PLATFORM.learning_rate,
    clip_norm: Annotated[float, typer.Option(help="Clipping norm C.")] = PLATFORM.clip_norm,
    delta: Annotated[
        float | None, typer.Option(help="δ (default: the clinic default for its size).")
    ] = None,
    accountant: Annotated[
        str, typer.Option(help=f"One of: {', '.join(ACCOUNTANTS)}.")
    ] = DEFAULT_ACCOUNTANT,
    dp_engine: Annotated[
        str, typer.Option(help=f"DP-SGD engine: {', '.join(DP_ENGINES)} (as clinics run it).")
    ] = DEFAULT_DP_ENGINE,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of canaries, inclusion and training.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure a lower bound on ε in one training run (Steinke, Nasr & Jagielski 2023)."""
    from client.empirical_audit import run_empirical_audit
    from client.training import TrainingConfigError, plan_dp_round

    if noise_multiplier is not None and target_epsilon is not None:
        raise UserError("give at most one of --target-epsilon and --noise-multiplier")
    if noise_multiplier is None and target_epsilon is None:
        target_epsilon = PLATFORM.target_epsilon
    if delta is not None and not 0 < delta < 1:
        raise UserError(f"--delta must be between 0 and 1 (exclusive), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise UserError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    if not 0 < confidence < 1:
        raise UserError(f"--confidence must be between 0 and 1 (exclusive), got {confidence}")
    clinic = _audit_data(data, task, seed)
    audit_delta = delta if delta is not None else default_delta(clinic.rows_read)

    def plan_for(records: int) -> DpRoundPlan:
        return plan_dp_round(
            n_train=records,
            batch_size=batch_size,
            local_epochs=local_epochs,
            learning_rate=learning_rate,
            clip_norm=clip_norm,
            total_rounds=1,
            delta=audit_delta,
            target_epsilon=target_epsilon,
            noise_multiplier=noise_multiplier,
        )

    try:
        with warnings.catch_warnings():
            # Opacus warns about its non-cryptographic RNG and hook internals: irrelevant to an
            # audit, whose training is never released.
            warnings.simplefilter("ignore", UserWarning)
            result = run_empirical_audit(
                clinic.x_train,
                clinic.y_train,
                plan_for,
                canaries=canaries,
                guesses_per_side=guesses,
                delta=audit_delta,
                seed=seed,
                confidence=confidence,
                accountant=accountant,
                engine=dp_engine,
            )
    except (TrainingConfigError, ValueError) as error:
        raise UserError(str(error)) from None
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(show_header=False, title="empirical privacy audit (one training run)")
    for label, value in (
        ("ε lower bound (measured)", f"{result.epsilon_lower_bound:.3f} at {confidence:.0%}"),
        ("ε upper bound (accountant)", f"{result.epsilon_accounted:.3f} ({result.accountant})"),
        ("δ", f"{result.delta:g}"),
        ("black-box (loss) correct", f"{result.correct_black_box}/{result.guesses}"),
        ("white-box (gradient) correct", f"{result.correct_white_box}/{result.guesses}"),
        ("canaries included", f"{result.canaries_included}/{result.canaries}"),
        (
            "training",
            f"σ={result.noise_multiplier:.4g} q={result.sample_rate:.4g} "
            f"steps={result.steps} on {result.train_records} records, {result.engine} engine",
        ),
    ):
        table.add_row(label, value)
    console.print(table)
    if result.consistent:
        console.print("[green]consistent[/]: the measured lower bound is below the accounted ε")
    else:
        error_console.print(
            "[bold red]INCONSISTENT[/]: the measured lower bound exceeds the accounted ε; "
            "the training leaks more than the accountant charges for"
        )
        raise typer.Exit(1)


def _audit_data(data: Path | None, task: Task, seed: int) -> ClinicData:
    if data is not None:
        if not data.is_file():
            raise UserError(f"--data {data}: no such file")
        return load_clinic_data("audited-clinic", data, task)
    with tempfile.TemporaryDirectory() as folder:
        (path,) = write_federation(Path(folder), n_clinics=1, seed=seed)
        return load_clinic_data("synthetic-clinic", Path(path), task)
