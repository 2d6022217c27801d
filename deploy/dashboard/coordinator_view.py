"""What the coordinator and researchers see: the federation's clinics, every run with its
rounds, the budgets the clinics reported, the coordinator's audit logs and the insight
queries answered.

A run folder (``oralfed federate --out``, ``oralfed federation launch --out``) holds the
run's coordinator database: its run and round records and the coordinator's signed log, in
which each clinic reported its own ε (relayed as reported, never recomputed:
:func:`~oralfed.privacy.budget_views.federation_budgets`, as ``oralfed audit budget``).
Everything here is read-only: run databases are opened with a read-only engine, so looking
can never migrate or alter them. Nothing held here is patient-level: rounds carry counts,
ε and noisy evaluation estimates; answers carry noisy cells with their intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from oralfed.deploy.federation_dir import ClinicEntry, FederationConfig
from oralfed.privacy.audit_log import AuditError, read_only_engine
from oralfed.privacy.audit_targets import COORDINATOR_DATABASE
from oralfed.privacy.budget_views import FederationBudgets, federation_budgets
from oralfed.privacy.keys import AuditKeyError
from oralfed.server.coordinator_db import CoordinatorStore, RoundRow, RunRow

__all__ = [
    "ClinicStatus",
    "QueryRecord",
    "RunView",
    "clinic_statuses",
    "query_records",
    "run_folders",
    "run_view",
]


@dataclass(frozen=True)
class RunView:
    """One run folder: its run record and rounds, and its log's budgets and verification
    (``problem`` says why any of it could not be read)."""

    folder: Path
    run_id: str | None
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    settings: dict[str, Any]
    message: str | None
    rounds: tuple[dict[str, Any], ...]  # RoundRecord.summary() as recorded
    budgets: FederationBudgets | None
    problem: str | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def age(self) -> tuple[bool, datetime | None]:
        """Sorts runs oldest first, runs whose start is unknown (unreadable) before all."""
        return (self.started_at is not None, self.started_at)

    @property
    def log_verified(self) -> bool:
        return self.budgets is not None and self.budgets.log_verified

    @property
    def final_auc(self) -> float | None:
        aucs = [float(r["eval_auc"]) for r in self.rounds if r.get("eval_auc") is not None]
        return aucs[-1] if aucs else None


@dataclass(frozen=True)
class ClinicStatus:
    """A clinic of the federation: its node key and the coordinator's record of it, and the
    latest round in which it trained or refused (from the runs shown)."""

    entry: ClinicEntry
    last_run: str | None
    last_round: int | None
    last_outcome: str | None


@dataclass(frozen=True)
class QueryRecord:
    query_id: str
    asked_at: datetime
    requester: str | None
    epsilon: float
    answer: dict[str, Any]


def run_folders(root: Path) -> list[Path]:
    """``root`` itself if it is a run folder, else its sub-folders that are, by name."""
    if (root / COORDINATOR_DATABASE).is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / COORDINATOR_DATABASE).is_file())


def run_view(folder: Path) -> RunView:
    """A run folder's view; a folder that cannot be read is shown with its problem."""
    database = folder / COORDINATOR_DATABASE
    try:
        engine = read_only_engine(database)
        try:
            with Session(engine) as session:
                runs = list(session.scalars(select(RunRow).order_by(RunRow.started_at)))
                rounds = list(session.scalars(select(RoundRow).order_by(RoundRow.round)))
        finally:
            engine.dispose()
    except (SQLAlchemyError, AuditError) as error:
        return _unreadable(folder, f"{database}: not a readable coordinator database ({error})")
    try:
        budgets: FederationBudgets | None = federation_budgets(folder)
        problem = None
    except (AuditError, AuditKeyError) as error:
        budgets, problem = None, str(error)
    except (ValueError, AttributeError, TypeError) as error:  # an entry edited out of shape
        budgets, problem = None, f"{database}: the coordinator's log cannot be read ({error})"
    if not runs:
        return _unreadable(folder, f"{database}: no run recorded yet", budgets)
    run = runs[-1]  # a folder holds one run; a resumed run keeps its row
    return RunView(
        folder=folder,
        run_id=run.run_id,
        status=run.status,
        started_at=run.started_at,
        finished_at=run.finished_at,
        settings=dict(run.settings or {}),
        message=run.message,
        rounds=tuple(r.summary for r in rounds if r.run_id == run.run_id),
        budgets=budgets,
        problem=problem,
    )


def clinic_statuses(federation_dir: Path, runs: list[RunView]) -> list[ClinicStatus]:
    """The federation's clinics, each with the newest round of ``runs`` it answered."""
    config = FederationConfig.load(federation_dir)
    latest: dict[str, tuple[str, int, str]] = {}
    for run in sorted(runs, key=lambda r: r.age):
        for summary in run.rounds:
            number = int(summary.get("round", 0))
            for clinic in summary.get("trained", []):
                latest[str(clinic)] = (run.name, number, "trained")
            for refusal in summary.get("refused", []):
                latest[str(refusal.get("clinic"))] = (run.name, number, "refused")
            for failure in summary.get("failed", []):
                latest[str(failure.get("clinic"))] = (run.name, number, "failed")
    return [
        ClinicStatus(entry, *latest.get(name, (None, None, None)))
        for name, entry in sorted(config.clinics.items())
    ]


def query_records(store: CoordinatorStore) -> list[QueryRecord]:
    """Every answered query the coordinator database recorded, newest first."""
    rows = store.queries()
    return [
        QueryRecord(row.query_id, row.asked_at, row.requester, row.epsilon, row.answer)
        for row in reversed(rows)
    ]


def _unreadable(folder: Path, problem: str, budgets: FederationBudgets | None = None) -> RunView:
    return RunView(folder, None, "unreadable", None, None, {}, None, (), budgets, problem)
