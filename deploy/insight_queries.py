"""One aggregate query as an operator runs it: which clinics to ask, the settings, the run.

The library behind ``oralfed insights query`` (simulated clinics, or the clinic nodes of a
deployed federation) and the clinics of ``oralfed insights serve``. The clinics to ask and
the settings the query ServerApp receives are decided here, once, so the simulated and the
deployed query cannot drift apart. No default depends on the working directory: clinic
ledgers live in the query folder (throw-away synthetic clinics) or under the clinic state
root (real clinic files), so a clinic's lifetime budget does not reset when you ``cd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oralfed.deploy.clinic_sources import ClinicSource, Notify, clinic_nodes
from oralfed.deploy.errors import FederationStopped
from oralfed.deploy.launch import launch_query
from oralfed.deploy.simulation import LOG_FILE, QUERY_APP, launch_simulation
from oralfed.schemas.query import QuerySpec
from oralfed.server.insights import QuerySettings, SuppressionPolicy, unanswered

__all__ = [
    "COORDINATOR_DB_FILE",
    "SimulatedQuery",
    "query_settings",
    "run_deployed_query",
    "run_simulated_query",
]

COORDINATOR_DB_FILE = "coordinator.db"


@dataclass(frozen=True)
class SimulatedQuery:
    """A simulated query's answer, and where its traces are kept."""

    answer: dict[str, Any]  # InsightAnswer.to_dict(), as recorded
    coordinator_db: Path
    log_file: Path  # Flower's and Ray's log of the simulation


def query_settings(
    spec: QuerySpec,
    policy: SuppressionPolicy,
    coordinator_db: Path | None = None,
    *,
    expected_clinics: int | None = None,
    out_dir: Path | None = None,
) -> QuerySettings:
    """What the query ServerApp is given, in the simulation and on a deployment alike.

    Without ``coordinator_db`` the ServerApp records in its own default database (under the
    coordinator's state root, on the coordinator's host).
    """
    return QuerySettings(
        query=spec.model_dump(mode="json"),
        cell_floor=policy.cell_floor,
        clinic_min_records=policy.clinic_min_records,
        allow_below_defaults=policy.allow_below_defaults,
        coordinator_db=f"sqlite:///{coordinator_db.resolve()}" if coordinator_db else None,
        expected_clinics=expected_clinics,
        out_dir=str(out_dir) if out_dir else None,
    )


def run_simulated_query(
    spec: QuerySpec,
    policy: SuppressionPolicy,
    clinics: ClinicSource,
    out: Path | None = None,
    coordinator_db: Path | None = None,
    notify: Notify = lambda _: None,
) -> SimulatedQuery:
    """Ask simulated clinics (Flower's Simulation Engine) one query and return the answer.

    ``out`` (default ``runs/insights-<UTC time>``) holds the simulation's files and, for
    synthetic clinics, their data and ledgers; the answer is recorded in ``coordinator_db``
    (default ``<out>/coordinator.db``). :class:`FederationStopped` if no answer came back,
    :class:`~server.insights.UnansweredQuery` if every clinic refused.
    """
    folder = _query_folder(out)
    nodes = clinic_nodes(clinics, folder, notify)
    database = (coordinator_db or folder / COORDINATOR_DB_FILE).resolve()
    settings = query_settings(spec, policy, database, expected_clinics=len(nodes))
    answers: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "answer":
            answers.append(event["answer"])

    result = launch_simulation(nodes, settings.public_dict(), folder, on_event, app=QUERY_APP)
    if not answers:
        raise FederationStopped(f"the query did not complete: {result.message}")
    return SimulatedQuery(_answered(answers[0]), database, folder / LOG_FILE)


def run_deployed_query(
    federation_dir: Path,
    spec: QuerySpec,
    policy: SuppressionPolicy,
    out: Path | None = None,
    coordinator_db: Path | None = None,
    on_line: Notify = lambda _: None,
) -> dict[str, Any]:
    """Ask the clinic nodes of a deployed federation one query (``flwr run`` on its SuperLink).

    The coordinator's ServerApp writes the answer into ``out`` (default as for
    :func:`run_simulated_query`) and records it in ``coordinator_db`` if given, else in its
    own database; ``on_line`` gets Flower's output. :class:`DeployedQueryError` if no
    answer came back, :class:`~server.insights.UnansweredQuery` if every clinic refused.
    """
    settings = query_settings(spec, policy, coordinator_db, out_dir=_query_folder(out))
    return _answered(launch_query(federation_dir, settings, on_line))


def _answered(answer: dict[str, Any]) -> dict[str, Any]:
    """``answer`` if a clinic took part in it; else its :class:`UnansweredQuery`, naming every
    clinic's refusal (the answer is recorded all the same)."""
    refusal = unanswered(answer)
    if refusal is not None:
        raise refusal
    return answer


def _query_folder(out: Path | None) -> Path:
    """``out``, or ``runs/insights-<UTC time>`` as for a federation's run folder (absolute).

    Not created here: the run creates it once the clinics are known to be usable, so a
    refused clinic folder leaves nothing behind.
    """
    folder = out or Path("runs") / datetime.now(UTC).strftime("insights-%Y%m%dT%H%M%SZ")
    return folder.resolve()
