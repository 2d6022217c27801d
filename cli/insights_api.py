"""``oralfed insights token create`` and ``insights serve``: the researchers' HTTP API.

Both default to state under the state root (:mod:`oralfed.deploy.insights_service`), never
the working directory, so a token created anywhere is one the API started anywhere accepts.
A token's cap is an (ε, δ) budget under an accountant, like a clinic's; ``serve`` takes a
``--reference`` file for effects only with ``--reference-is-public``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from oralfed.cli.insights_model import (
    ReferenceIsPublicOption,
    ReferenceOption,
    private_reference,
)
from oralfed.cli.insights_query import ClinicsOption, DataOption, SeedOption, StateOption
from oralfed.cli.output import console
from oralfed.deploy.clinic_sources import ClinicSource
from oralfed.deploy.insights_service import create_api_token, local_insights_api
from oralfed.privacy.accountants import ACCOUNTANTS, DEFAULT_ACCOUNTANT
from oralfed.schemas.query import DEFAULT_MAX_CELLS, DEFAULT_QUERY_DELTA
from oralfed.server.model_insights import PrivateReferenceError

__all__ = ["serve", "token_app"]

token_app = typer.Typer(help="API tokens for researchers (stored hashed, each with an (ε, δ) cap).")

CoordinatorDbOption = Annotated[
    Path | None,
    typer.Option(
        help="Coordinator database (tokens, answers). Default: "
        "<state root>/coordinator/coordinator.db (ORALFED_HOME, default ~/.oralfed)."
    ),
]


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who the token is for.")],
    epsilon_cap: Annotated[
        float,
        typer.Option(help="ε the token's answered queries may reach together, at --delta."),
    ],
    delta: Annotated[
        float, typer.Option(help="δ at which the token's composed ε is computed.")
    ] = DEFAULT_QUERY_DELTA,
    accountant: Annotated[
        str,
        typer.Option(
            help=f"Accountant that composes the token's queries: {', '.join(ACCOUNTANTS)}."
        ),
    ] = DEFAULT_ACCOUNTANT,
    coordinator_db: CoordinatorDbOption = None,
) -> None:
    """Create an API token; it is shown once and stored only as a salted hash."""
    token = create_api_token(name, epsilon_cap, coordinator_db, delta=delta, accountant=accountant)
    console.print(
        f"Token for {name} (ε cap {epsilon_cap:g} at δ={delta:g}, {accountant}); "
        "it is not stored, keep it now:"
    )
    print(token)


def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    clinics: ClinicsOption = 3,
    data: DataOption = None,
    state_dir: StateOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for synthetic clinics and the request log. Default: "
            "<state root>/insights (ORALFED_HOME, default ~/.oralfed)."
        ),
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Model for /v1/risk, /v1/effects.")] = None,
    reference: ReferenceOption = None,
    reference_is_public: ReferenceIsPublicOption = False,
    coordinator_db: CoordinatorDbOption = None,
    max_cells: Annotated[int, typer.Option(help="Most cells a query may make.")] = (
        DEFAULT_MAX_CELLS
    ),
    seed: SeedOption = 7,
) -> None:
    """Serve the insights HTTP API; queries run the clinics' code for clinics on this host."""
    try:
        api = local_insights_api(
            ClinicSource(clinics, data, state_dir, seed),
            out,
            coordinator_db,
            model=model,
            reference=reference,
            reference_is_public=reference_is_public,
            max_cells=max_cells,
            notify=console.print,
        )
    except PrivateReferenceError as error:
        raise private_reference(error) from None
    console.print(f"Insights API on http://{host}:{port} (OpenAPI: /docs)")
    uvicorn.run(api, host=host, port=port, log_level="warning")
