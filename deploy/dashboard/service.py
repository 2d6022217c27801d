"""The dashboards ``oralfed dashboard serve`` starts: a clinic's or the coordinator's.

Each checks what it was pointed at before serving (a clinic's state dir must hold its
ledger; a coordinator's runs folder must exist), so a mistyped path is refused with its
name instead of serving an empty page; and each logs every request to a file.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from oralfed.deploy.clinic_sources import ClinicSource, Notify
from oralfed.deploy.dashboard.app import ClinicSite, CoordinatorSite, create_dashboard, log
from oralfed.deploy.errors import RunFolderError
from oralfed.deploy.federation_dir import FEDERATION_FILE
from oralfed.deploy.insights_service import (
    coordinator_db_path,
    default_api_folder,
    local_insights_api,
    log_requests_to,
)
from oralfed.privacy.audit_targets import LEDGER_DATABASE
from oralfed.schemas.query import DEFAULT_MAX_CELLS
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.insights_api import CappedQueries

__all__ = ["DASHBOARD_LOG_FILE", "clinic_dashboard", "coordinator_dashboard"]

DASHBOARD_LOG_FILE = "dashboard.log"


def clinic_dashboard(state_dir: Path, notify: Notify = lambda _: None) -> FastAPI:
    """A clinic's dashboard over ``state_dir``; requests are logged to its
    ``dashboard.log``."""
    state_dir = state_dir.resolve()
    if not (state_dir / LEDGER_DATABASE).is_file():
        raise RunFolderError(
            f"state dir {state_dir}: no {LEDGER_DATABASE} (is this a clinic's state dir?)"
        )
    notify(f"Requests are logged to {log_requests_to(log, state_dir / DASHBOARD_LOG_FILE)}")
    return create_dashboard(ClinicSite(state_dir))


def coordinator_dashboard(
    runs: Path,
    *,
    federation_dir: Path | None = None,
    coordinator_db: Path | None = None,
    allow_queries: bool = False,
    clinics: ClinicSource | None = None,
    folder: Path | None = None,
    max_cells: int | None = None,
    notify: Notify = lambda _: None,
) -> FastAPI:
    """The coordinator's dashboard over the run folders in ``runs``.

    Tokens and answered queries are the coordinator database's (``coordinator_db``, as for
    the insights API). With ``allow_queries`` the insights API over ``clinics`` is served
    under ``/api`` and the query form asks them; otherwise nothing can be spent. Requests are
    logged to ``<folder>/dashboard.log`` (``folder`` defaults to the insights API's).
    """
    runs = runs.resolve()
    if not runs.is_dir():
        raise RunFolderError(f"runs folder {runs}: no such folder")
    if federation_dir is not None and not (federation_dir / FEDERATION_FILE).is_file():
        raise RunFolderError(f"{federation_dir}: not a federation folder (no {FEDERATION_FILE})")
    folder = (folder or default_api_folder()).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    notify(f"Requests are logged to {log_requests_to(log, folder / DASHBOARD_LOG_FILE)}")
    if not allow_queries:
        store = CoordinatorStore.sqlite_file(coordinator_db_path(coordinator_db))
        return create_dashboard(CoordinatorSite(runs, store, federation_dir))
    api = local_insights_api(
        clinics or ClinicSource(),
        folder,
        coordinator_db,
        max_cells=max_cells if max_cells is not None else DEFAULT_MAX_CELLS,
        notify=notify,
    )
    queries: CappedQueries = api.state.queries
    site = CoordinatorSite(runs, queries.store, federation_dir, queries, api, max_cells=max_cells)
    return create_dashboard(site)
