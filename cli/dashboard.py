"""``oralfed dashboard serve`` and ``dashboard token create``: the web dashboard.

``serve --state-dir`` shows a clinic's budgets, charges and audit log to its privacy
officer; ``serve --runs`` shows the coordinator's runs, the clinics' reported budgets and
the answered queries, and with ``--allow-queries`` a form that asks the clinics a query
within the logged-in token's cap. Both bind to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from oralfed.cli.insights_api import CoordinatorDbOption
from oralfed.cli.insights_query import ClinicsOption, DataOption, SeedOption
from oralfed.cli.output import console
from oralfed.deploy.clinic_sources import ClinicSource
from oralfed.deploy.dashboard import clinic_dashboard, coordinator_dashboard, create_clinic_token
from oralfed.deploy.errors import RunFolderError
from oralfed.schemas.query import DEFAULT_MAX_CELLS

__all__ = ["app"]

app = typer.Typer(help="The web dashboard: a clinic's privacy budgets, or the federation's runs.")
token_app = typer.Typer(help="A clinic's dashboard tokens (stored hashed in its state dir).")
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    state_dir: Annotated[Path, typer.Option(help="The clinic's state dir.")],
    name: Annotated[str, typer.Option(help="Who the token is for (e.g. privacy-officer).")],
) -> None:
    """Create a dashboard token for a clinic; it is shown once and stored only hashed."""
    token = create_clinic_token(state_dir, name)
    console.print(f"Dashboard token for {name} at {state_dir}; it is not stored, keep it now:")
    print(token)


@app.command()
def serve(
    state_dir: Annotated[
        Path | None, typer.Option(help="Clinic mode: the clinic's state dir (its ledger).")
    ] = None,
    runs: Annotated[
        Path | None,
        typer.Option(
            help="Coordinator mode: a run folder, or a folder of run folders "
            "(default runs/, where federate and federation launch put them)."
        ),
    ] = None,
    federation_dir: Annotated[
        Path | None,
        typer.Option(
            "--federation-dir",
            "-f",
            envvar="ORALFED_FEDERATION_DIR",
            help="Coordinator mode: the federation folder (its clinics and node keys).",
        ),
    ] = None,
    coordinator_db: CoordinatorDbOption = None,
    allow_queries: Annotated[
        bool,
        typer.Option(help="Coordinator mode: serve the query form and the insights API."),
    ] = False,
    clinics: ClinicsOption = 3,
    data: DataOption = None,
    clinic_state: Annotated[
        Path | None, typer.Option(help="State (ledgers) of the clinics queries ask.")
    ] = None,
    seed: SeedOption = 7,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the query clinics and the request log.")
    ] = None,
    max_cells: Annotated[int, typer.Option(help="Most cells a query may make.")] = (
        DEFAULT_MAX_CELLS
    ),
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8090,
) -> None:
    """Serve the dashboard of a clinic (--state-dir) or of the coordinator (--runs)."""
    if state_dir is not None and runs is not None:
        raise RunFolderError("give one of --state-dir (clinic) and --runs (coordinator)")
    if state_dir is not None:
        dashboard = clinic_dashboard(state_dir, console.print)
    else:
        dashboard = coordinator_dashboard(
            runs or Path("runs"),
            federation_dir=federation_dir,
            coordinator_db=coordinator_db,
            allow_queries=allow_queries,
            clinics=ClinicSource(clinics, data, clinic_state, seed),
            folder=out,
            max_cells=max_cells,
            notify=console.print,
        )
    console.print(f"Dashboard on http://{host}:{port}/ (log in with a token)")
    uvicorn.run(dashboard, host=host, port=port, log_level="warning")
