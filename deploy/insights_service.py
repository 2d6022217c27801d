"""The researchers' insights API over clinics on this host, and the tokens it accepts.

The library behind ``oralfed insights serve`` and ``oralfed insights token create``. Both
default to the coordinator's database under the state root, the one a deployed query
ServerApp records in, so a token created without options is one the API accepts; the API's
own folder (synthetic clinics, their ledgers, the request log) is also under the state root.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI

from oralfed.deploy.clinic_sources import ClinicSource, clinic_nodes
from oralfed.deploy.insight_queries import COORDINATOR_DB_FILE, Notify
from oralfed.deploy.local_clinics import answer_in_process
from oralfed.privacy.accountants import DEFAULT_ACCOUNTANT
from oralfed.schemas.query import DEFAULT_MAX_CELLS, DEFAULT_QUERY_DELTA
from oralfed.schemas.state import coordinator_state_dir, state_root
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.insights_api import create_app, create_token
from oralfed.server.insights_api import log as api_log
from oralfed.server.model_insights import refuse_private_reference

__all__ = [
    "API_LOG_FILE",
    "coordinator_db_path",
    "create_api_token",
    "default_api_folder",
    "local_insights_api",
    "log_requests_to",
]

API_LOG_FILE = "insights-api.log"


def coordinator_db_path(given: Path | None = None) -> Path:
    """``given``, or the coordinator's database under the state root (tokens, answers)."""
    return (given or coordinator_state_dir() / COORDINATOR_DB_FILE).resolve()


def default_api_folder() -> Path:
    """The API's folder under the state root: synthetic clinics, their ledgers, the log."""
    return state_root() / "insights"


def create_api_token(
    name: str,
    epsilon_cap: float,
    coordinator_db: Path | None = None,
    *,
    delta: float = DEFAULT_QUERY_DELTA,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> str:
    """A new token for ``name`` with its own (ε cap, δ) and accountant; the secret is returned
    once, never stored."""
    store = CoordinatorStore.sqlite_file(coordinator_db_path(coordinator_db))
    try:
        return create_token(store, name, epsilon_cap, delta=delta, accountant=accountant)
    finally:
        store.close()


def local_insights_api(
    clinics: ClinicSource,
    folder: Path | None = None,
    coordinator_db: Path | None = None,
    *,
    model: Path | None = None,
    reference: Path | None = None,
    reference_is_public: bool = False,
    max_cells: int = DEFAULT_MAX_CELLS,
    notify: Notify = lambda _: None,
) -> FastAPI:
    """The API, answering queries with each clinic's own code run on this host.

    Requests are logged to ``<folder>/insights-api.log`` (``folder`` defaults to
    :func:`default_api_folder`); tokens and answers are in ``coordinator_db`` (default
    :func:`coordinator_db_path`). ``model`` enables ``/v1/risk`` and ``/v1/effects``, whose
    reference is synthetic unless ``reference`` is a file declared public with
    ``reference_is_public`` (a private one is refused before any clinic is set up).
    """
    refuse_private_reference(reference, reference_is_public)
    folder = (folder or default_api_folder()).resolve()
    nodes = clinic_nodes(clinics, folder, notify)
    folder.mkdir(parents=True, exist_ok=True)
    log_file = log_requests_to(api_log, folder / API_LOG_FILE)
    notify(f"Requests are logged to {log_file}")
    database = coordinator_db_path(coordinator_db)
    return create_app(
        CoordinatorStore.sqlite_file(database),
        lambda spec, policy, requester: answer_in_process(nodes, spec, policy, requester),
        f"sqlite:///{database}",
        max_cells=max_cells,
        model_path=model,
        reference=reference,
        reference_is_public=reference_is_public,
    )


def log_requests_to(logger: logging.Logger, path: Path) -> Path:
    """Send a web app's request log to ``path``, once however often the app is built."""
    if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return path
