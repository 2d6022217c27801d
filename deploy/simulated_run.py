"""A whole DP federation on this machine: clinic files → checked clinics → simulation → report.

The library behind ``oralfed federate`` (its deployed twin is :mod:`oralfed.deploy.launch`).
Every clinic file is validated before anything is written, so a bad file is reported with
its file, row and field before a round starts; the run folder then holds the report, the
model, the round history, the Flower log and (for synthetic clinics) the clinics' state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from oralfed.client.data import clinic_data, keep_receipt
from oralfed.deploy.baselines import BaselineComparison, add_comparison, compare_with_baselines
from oralfed.deploy.clinic_sources import ClinicSource, Notify, clinic_nodes
from oralfed.deploy.errors import RunFolderError
from oralfed.deploy.parallel import map_over_cores
from oralfed.deploy.run_clinics import simulated_clinics
from oralfed.deploy.simulation import EventCallback, SimulationResult, launch_simulation
from oralfed.schemas.features import Task
from oralfed.schemas.files import write_json_atomically
from oralfed.schemas.importer import ImportResult, import_file, write_quarantine
from oralfed.schemas.model import load_model
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.settings import FederationSettings
from oralfed.server.app import GLOBAL_MODEL_FILE
from oralfed.server.checkpoint import Checkpoint
from oralfed.server.report import REPORT_FILE, build_run_report

NON_PRIVATE_BASELINES_FILE = "baselines-non-private.json"

__all__ = [
    "NON_PRIVATE_BASELINES_FILE",
    "SimulatedRun",
    "SimulatedRunResult",
    "new_run_folder",
    "resume_simulated_federation",
    "run_simulated_federation",
]


@dataclass(frozen=True)
class SimulatedRun:
    """What to run: the settings, which clinics, and whether to train the baselines too."""

    settings: FederationSettings  # out_dir is the run folder; seed also seeds synthetic clinics
    source: ClinicSource = field(default_factory=ClinicSource)
    # The non-private baselines (central pool, local-only): None trains them for synthetic
    # clinics only; on real clinic files only when asked, and then kept out of the report.
    baselines: bool | None = None
    # Each clinic declares its training-set size public (as its operator may): q, steps and
    # δ then derive from it and no DP size estimate is spent.
    declare_sizes: bool = False
    # A Ray cluster to run the clinics on (``launch_simulation``); None: Ray on this machine.
    ray_address: str | None = None

    @property
    def trains_baselines(self) -> bool:
        return self.source.data is None if self.baselines is None else self.baselines


@dataclass(frozen=True)
class SimulatedRunResult:
    report: dict[str, Any]
    simulation: SimulationResult
    run_folder: Path


def new_run_folder(out: Path | None) -> Path:
    """``out``, or ``runs/<UTC time>``; refused if it already holds files (nothing is lost)."""
    folder = out or Path("runs") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if folder.exists() and any(folder.iterdir()):
        raise RunFolderError(f"run folder {folder} already holds files; choose a new folder")
    return folder.resolve()


def run_simulated_federation(
    run: SimulatedRun,
    notify: Notify = lambda _: None,
    on_event: EventCallback | None = None,
    on_baselines: Callable[[], None] = lambda: None,
) -> SimulatedRunResult:
    """Run the federation and write its report; ``notify`` gets one line per clinic set up.

    A run that did not complete still has its report (``report["status"]`` says how it
    ended); ``KeyboardInterrupt`` comes after every process the run started has stopped.
    """
    settings = run.settings
    if settings.out_dir is None:
        raise RunFolderError("a simulated run needs its run folder (out_dir)")
    if not run.source.epsilon_cap > 0:
        raise RunFolderError(f"epsilon cap must be positive, got {run.source.epsilon_cap}")
    out = settings.out_dir
    nodes = clinic_nodes(replace(run.source, seed=settings.seed), out, notify)
    # Refuses before writing; one clinic per call, spread over the cores for large runs.
    check = partial(_check_clinic_file, settings=settings, keep=run.source.data is None)
    checked = list(map_over_cores(check, nodes))
    if run.declare_sizes:
        nodes = [
            replace(node, public_size=clinic.n_train)
            for node, clinic in zip(nodes, checked, strict=True)
        ]
    out.mkdir(parents=True, exist_ok=True)
    for clinic in checked:
        _report_import(clinic, out, settings.task, notify)
    if len(nodes) < settings.min_clinics:
        raise RunFolderError(
            f"{len(nodes)} clinic(s) found, fewer than min-clinics {settings.min_clinics}"
        )
    simulation = launch_simulation(
        nodes, settings.public_dict(), out, on_event, ray_address=run.ray_address
    )
    report = _run_report(settings, simulation, simulation.rounds)
    model_path = out / GLOBAL_MODEL_FILE
    if simulation.status == "completed" and run.trains_baselines:
        on_baselines()
        model, _, _ = load_model(model_path)
        comparison = compare_with_baselines(
            nodes, model, settings.task, settings.hidden_sizes, settings.seed
        )
        if run.source.data is None:  # synthetic clinics: nothing private to keep apart
            add_comparison(report, comparison)
        else:
            report["baselines"] = _keep_apart(comparison, report, out)
    return _finish(report, simulation, out)


def resume_simulated_federation(
    checkpoint: Checkpoint,
    settings: FederationSettings,
    on_event: EventCallback | None = None,
    ray_address: str | None = None,
) -> SimulatedRunResult:
    """Continue the simulated run in ``settings.out_dir`` from its ``checkpoint`` (see
    ``oralfed.server.checkpoint.resumed_settings``), with the same clinics. The report
    covers every round; the baselines are not trained again (a resumed report has none)."""
    out = settings.out_dir
    if out is None:
        raise RunFolderError("a resumed run needs its run folder (out_dir)")
    nodes = simulated_clinics(out)
    simulation = launch_simulation(
        nodes, settings.public_dict(), out, on_event, ray_address=ray_address
    )
    report = _run_report(settings, simulation, [*checkpoint.history, *simulation.rounds])
    report["resumed_after_round"] = checkpoint.round
    return _finish(report, simulation, out)


def _run_report(
    settings: FederationSettings, simulation: SimulationResult, rounds: list[dict[str, Any]]
) -> dict[str, Any]:
    return build_run_report(
        run_id=simulation.run_id,
        status=simulation.status,
        message=simulation.message,
        settings=settings.public_dict(),
        rounds=rounds,
    )


def _finish(report: dict[str, Any], simulation: SimulationResult, out: Path) -> SimulatedRunResult:
    """Name the model file in the report and write ``report.json``."""
    model_path = out / GLOBAL_MODEL_FILE
    report["model_file"] = str(model_path) if model_path.exists() else None
    write_json_atomically(out / REPORT_FILE, report)
    return SimulatedRunResult(report, simulation, out)


def _keep_apart(comparison: BaselineComparison, report: dict[str, Any], out: Path) -> str:
    """Real clinic files: the non-private baselines go to a file of their own, marked so,
    never into report.json (the report is what gets shared)."""
    figures: dict[str, Any] = {"clinics": [{"clinic": row["clinic"]} for row in report["clinics"]]}
    add_comparison(figures, comparison)
    path = out / NON_PRIVATE_BASELINES_FILE
    write_json_atomically(
        path,
        {
            "warning": "NON-PRIVATE: trained and scored on the clinics' raw records; do not share",
            **figures,
        },
    )
    return f"non-private; kept apart in {path} (do not share)"


@dataclass(frozen=True)
class _CheckedFile:
    """What the run keeps of a clinic file it validated: its rejected rows (for the
    quarantine file) and counts, never its records, so that checking thousands of clinics
    up front holds one clinic's records at a time."""

    rejected: ImportResult  # the import without its accepted records
    rows_accepted: int
    usable: int  # research-tier rows with a label for the task
    n_train: int


def _check_clinic_file(node: ClinicNode, settings: FederationSettings, keep: bool) -> _CheckedFile:
    """Validate a clinic's file up front, so bad input is reported before any round starts.

    With ``keep`` (synthetic clinics, whose state this run creates) the import is kept as
    the clinic's signed receipt, so the clinic does not validate the same file again at its
    first request (``oralfed.client.import_receipt``). A clinic's own state is never
    written by a check that may still refuse the run.
    """
    result = import_file(node.data_path)
    data = clinic_data(node.clinic_id, result, settings.task)  # refuses an unusable file
    if keep:
        keep_receipt(node.state_dir, data)
    return _CheckedFile(
        rejected=replace(result, accepted=[]),
        rows_accepted=result.rows_accepted,
        usable=data.n_train + data.n_test,  # the training records, split
        n_train=data.n_train,
    )


def _report_import(clinic: _CheckedFile, out: Path, task: Task, notify: Notify) -> None:
    """One line per clinic; rejected rows go to the run's quarantine folder with reasons."""
    result = clinic.rejected
    path = result.path
    if result.rejected:
        quarantine = write_quarantine(result, out / "quarantine" / f"{path.stem}.quarantine.csv")
        notify(
            f"[yellow]{path}: {result.rows_rejected} of {result.rows_read} rows rejected[/] "
            f"(reasons in {quarantine})"
        )
    notify(
        f"{path.stem}: {clinic.rows_accepted} rows accepted, "
        f"{clinic.usable} research-tier rows for {task.value}"
    )
