"""``oralfed audit``: check the signed audit log, export it, and report privacy budgets.

Each command parses its options, calls one library function and renders the result:
:func:`~oralfed.privacy.audit_targets.verify_target`,
:func:`~oralfed.privacy.audit_targets.export_log`,
:func:`~oralfed.privacy.budget_views.budget_view` and
:func:`~oralfed.client.empirical_audit_run.audit_clinic_training`.

Exit codes: 0 verified / done; 1 the log failed verification or a clinic's ledger does not
match it (``verify``, and ``budget``, which runs the same check before its figures can be
trusted), or the empirical audit measured more leakage than the accountant charges (the
output says which entry and why); otherwise the refusal's own code
(``oralfed.schemas.errors.ExitCode``): 2 a bad option, 3 unusable clinic data, 6 an
unreadable ledger, 7 an unreadable log or key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from oralfed.cli.output import UserError, console, error_console, print_json
from oralfed.client.empirical_audit_run import DEFAULT_CANARIES, DEFAULT_INCLUDED_GUESSES
from oralfed.privacy.accountants import ACCOUNTANTS, DEFAULT_ACCOUNTANT
from oralfed.privacy.audit_targets import (
    EMBEDDED_KEY,
    VerificationReport,
    export_log,
    verify_target,
)
from oralfed.privacy.budget_report import DatasetBudgetReport
from oralfed.privacy.budget_views import FederationBudgets, budget_view
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.features import Task
from oralfed.schemas.settings import DpEngineName, FederationSettings, SettingsError

if TYPE_CHECKING:  # torch is imported only when an empirical audit runs
    from oralfed.client.empirical_audit import EmpiricalAuditResult

app = typer.Typer(
    help="Verify and export the signed audit log; report privacy budgets.", no_args_is_help=True
)

StateDirOption = Annotated[
    Path | None,
    typer.Option(help="The node's state directory (holds ledger.db or coordinator.db)."),
]

PLATFORM = FederationSettings()  # the defaults a federation trains with

# The library names the settings it refuses; these are the options that set them here.
_FLAGS = {
    "state dir": "--state-dir",
    "export file": "--file",
    "target epsilon": "--target-epsilon",
    "noise multiplier": "--noise-multiplier",
    "delta": "--delta",
    "accountant": "--accountant",
    "confidence": "--confidence",
}


class ExportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


@contextmanager
def _in_flag_terms() -> Iterator[None]:
    """A refused setting, named by the option that sets it (see ``_FLAGS``)."""
    try:
        yield
    except SettingsError as error:
        raise UserError(error.naming(_FLAGS)) from None


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
    """Check every entry's hash, signature and chain link, and a clinic's ledger rows
    against the log; exit 1 naming each failure. Nothing checked is written to."""
    with _in_flag_terms():
        report = verify_target(
            state_dir=state_dir,
            export_file=export_file,
            public_key=public_key,
            expect_head=expect_head,
        )
    if as_json:
        print_json(report.to_dict())
    else:
        _render_verification(report)
    if not report.ok:
        raise typer.Exit(ExitCode.VERIFICATION_FAILED)


def _render_verification(report: VerificationReport) -> None:
    result = report.result
    key_note = (
        "the key embedded in the export (pass --public-key with the key you received from "
        "the node to rule out a re-signed copy)"
        if report.key_source == EMBEDDED_KEY
        else report.key_source
    )
    # soft_wrap: a path is never folded at the console's width (80 columns in a pipe)
    console.print(f"audit log: {report.source}", highlight=False, soft_wrap=True)
    console.print(
        f"checked with: {key_note} (key {result.signer[:16]}…)", highlight=False, soft_wrap=True
    )
    if len(result.key_chain) > 1:
        console.print(
            f"signing keys in order: {' → '.join(key[:16] + '…' for key in result.key_chain)} "
            f"({len(result.key_chain) - 1} rotation(s) recorded in the log)",
            highlight=False,
            soft_wrap=True,
        )
    if not result.ok:
        _render_failures(report)
        return
    if result.entries == 0:
        console.print("[yellow]the log is empty[/]: nothing to verify")
    console.print(
        f"[bold green]VERIFIED[/]: {result.entries} entries, every hash, signature and link intact"
        + ("; the ledger's rows match them" if report.ledger_checked else ""),
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"head: entry {result.head_seq}, hash {result.head_hash}\n"
        "Record this hash elsewhere; `oralfed audit verify --expect-head HASH` later proves "
        "that no entry up to it was removed.",
        highlight=False,
        soft_wrap=True,
    )


def _render_failures(report: VerificationReport) -> None:
    result = report.result
    error_console.print(
        f"[bold red]NOT VERIFIED[/]: {len(result.failures)} problem(s) in "
        f"{result.entries} entries"
        + (" and the ledger's rows beside them" if report.ledger_checked else ""),
        highlight=False,
        soft_wrap=True,
    )
    for failure in result.failures:
        error_console.print(f"  - {failure}", highlight=False, soft_wrap=True)


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
    exported = export_log(state_dir, out, fmt=fmt.value)
    for path in exported.files:
        console.print(f"wrote {path}", highlight=False)
    result = exported.result
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
    """ε spent and remaining per data set, recomputed from the ledger's whole history.

    A clinic's ledger is first checked against its signed audit log, as ``verify`` checks
    it: figures of a ledger that does not match are shown under the failures, no chart is
    drawn from them, and the command exits 1.
    """
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot must name a .png file, got {plot}")
    view = budget_view(state_dir, dataset=dataset, by_round=by_round, chart=plot)
    if isinstance(view, FederationBudgets):
        _render_federation_budgets(view, as_json=as_json)
        return
    verification = view.verification
    if as_json:
        print_json(
            {
                "verification": verification.to_dict(),
                "datasets": [report.to_dict() for report in view.reports],
                "unaccountable": view.unaccountable,
            }
        )
    else:
        _render_budget_verification(verification)
        if view.unaccountable is not None:
            error_console.print(view.unaccountable, highlight=False, soft_wrap=True)
        for report in view.reports:
            _render_budget(report, by_round=by_round)
        if view.chart is not None:
            console.print(f"wrote {view.chart}", highlight=False)
        elif plot is not None:
            error_console.print(
                f"{plot} not written: the ledger does not match its audit log",
                highlight=False,
                soft_wrap=True,
            )
    if not verification.ok:
        raise typer.Exit(ExitCode.VERIFICATION_FAILED)


def _render_budget_verification(report: VerificationReport) -> None:
    """Say first whether the ledger's figures can be trusted: they are what its rows give,
    which is what the signed log supports only if the two match."""
    if report.ok:
        console.print(
            f"checked against the signed audit log ({report.result.entries} entries, head "
            f"{report.result.head_hash[:16]}…): the log verifies and the ledger's rows match it",
            highlight=False,
            soft_wrap=True,
        )
        return
    _render_failures(report)
    error_console.print(
        "[bold red]the figures below are what the ledger's rows give, not what its signed "
        "log supports[/]",
        highlight=False,
        soft_wrap=True,
    )


def _render_federation_budgets(view: FederationBudgets, *, as_json: bool) -> None:
    """The coordinator's view, clearly labelled as what the clinics reported."""
    if as_json:
        print_json(view.to_dict())
        return
    table = Table(
        title="privacy budgets AS REPORTED BY THE CLINICS (the coordinator holds no ledger: "
        "each clinic's own `oralfed audit budget` is authoritative)"
    )
    for column in ("clinic", "ε spent", "ε cap", "δ", "accountant", "last run / round", "refused"):
        table.add_column(column)
    for reported in view.budgets:
        table.add_row(
            reported.clinic_id,
            _epsilon_text(reported.epsilon_spent),
            f"{reported.epsilon_cap:g}",
            f"{reported.delta:g}",
            reported.accountant,
            f"{reported.run_id[:8]} / {reported.round}",
            str(reported.refusals),
        )
    console.print(table)
    status = (
        "verified" if view.log_verified else "[red]NOT verified[/] (run `oralfed audit verify`)"
    )
    console.print(f"from the coordinator's signed log {view.source}: {status}", highlight=False)


def _render_budget(report: DatasetBudgetReport, *, by_round: bool) -> None:
    summary = Table(show_header=False, title=f"privacy budget: {report.dataset_id}")
    mechanisms = "; ".join(
        f"{use.mechanism} σ={use.noise_multiplier:g}"
        + (f" q={use.sample_rate:g}" if use.sample_rate is not None else "")
        + f", {use.repetitions} times in {use.charges} charge(s)"
        for use in report.mechanisms
    )
    for label, value in (
        ("ε spent", _epsilon_text(report.spent)),
        ("ε remaining", _epsilon_text(report.remaining)),
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
            _epsilon_text(point.epsilon),
            "ok"
            if point.receipt_matches
            else f"[red]MISMATCH {_epsilon_text(point.epsilon_recorded)}[/]",
            f"{point.epsilon_cap:g}",
        )
    console.print(table)


def _epsilon_text(value: float) -> str:
    """ε as a figure, or what it is when it is none: no finite bound, or not reported."""
    if math.isnan(value):
        return "undefined"
    if math.isinf(value):
        return "∞ (no finite bound)"
    return f"{value:.4f}"


@app.command()
def empirical(
    data: Annotated[
        Path | None,
        typer.Option(help="The clinic's export to audit on (default: a synthetic clinic)."),
    ] = None,
    task: Annotated[Task, typer.Option(help="Outcome to learn.")] = PLATFORM.task,
    canaries: Annotated[
        int, typer.Option(help="Canaries m of each kind (loss, gradient), each included w.p. ½.")
    ] = DEFAULT_CANARIES,
    guesses: Annotated[
        int, typer.Option(help="k: guess 'included' for the k highest scores of each kind.")
    ] = DEFAULT_INCLUDED_GUESSES,
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
        str, typer.Option(help=f"DP-SGD engine: {', '.join(DpEngineName)} (as clinics run it).")
    ] = DpEngineName.FAST,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of canaries, inclusion and training.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure a lower bound on ε in one training run (Steinke, Nasr & Jagielski 2023)."""
    from oralfed.client.empirical_audit_run import audit_clinic_training

    with _in_flag_terms():
        result = audit_clinic_training(
            data,
            task=task,
            canaries=canaries,
            included_guesses=guesses,
            target_epsilon=target_epsilon,
            noise_multiplier=noise_multiplier,
            batch_size=batch_size,
            local_epochs=local_epochs,
            learning_rate=learning_rate,
            clip_norm=clip_norm,
            delta=delta,
            accountant=accountant,
            engine=dp_engine,
            confidence=confidence,
            seed=seed,
        )
    if as_json:
        print_json(result.to_dict())
    else:
        _render_empirical(result)
    if result.verdict == "violation":
        raise typer.Exit(ExitCode.VERIFICATION_FAILED)


def _render_empirical(result: EmpiricalAuditResult) -> None:
    table = Table(show_header=False, title="empirical privacy audit (one training run)")
    for label, value in (
        (
            "ε lower bound (measured)",
            f"{result.epsilon_lower_bound:.3f} at {result.confidence:.0%}",
        ),
        ("ε upper bound (accountant)", f"{result.epsilon_accounted:.3f} ({result.accountant})"),
        ("δ", f"{result.delta:g}"),
        ("black-box (loss) correct", f"{result.correct_black_box}/{result.guesses}"),
        ("white-box (gradient) correct", f"{result.correct_white_box}/{result.guesses}"),
        ("most ε provable", f"{result.max_provable_epsilon:.3f} (every guess right)"),
        (
            "canaries included",
            f"loss {result.included_black_box}/{result.canaries}, "
            f"gradient {result.included_white_box}/{result.canaries}",
        ),
        (
            "training",
            f"σ={result.noise_multiplier:.4g} q={result.sample_rate:.4g} "
            f"steps={result.steps} on {result.train_records} records, {result.engine} engine",
        ),
    ):
        table.add_row(label, value)
    console.print(table)
    if result.verdict == "violation":
        error_console.print(
            "[bold red]VIOLATION[/]: the measured lower bound exceeds the accounted ε; "
            "the training leaks more than the accountant charges for"
        )
    elif result.verdict == "consistent":
        console.print(
            "[green]consistent[/]: the audit could have exceeded the accounted ε and did not"
        )
    else:
        console.print(
            "[yellow]inconclusive[/]: even all guesses right could not exceed the accounted ε; "
            "use more --canaries and --guesses"
        )
