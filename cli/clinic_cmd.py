"""``oralfed clinic``: run a clinic's node (a Flower SuperNode) from its startup kit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from oralfed.cli.output import UserError, console
from oralfed.deploy.kit import ClinicKit
from oralfed.deploy.processes import supervise
from oralfed.deploy.supernode import (
    DEFAULT_NODE_PORT,
    SuperNodeOptions,
    check_clinic_data,
    read_policy,
    start_supernode,
)
from oralfed.schemas.clinic_policy import ClinicPolicy
from oralfed.schemas.node_config import DEFAULT_EPSILON_CAP

app = typer.Typer(help="Run a clinic node.", no_args_is_help=True)


@app.command()
def start(
    kit: Annotated[Path, typer.Option(help="The clinic's startup kit folder.")],
    data: Annotated[Path, typer.Option(help="The clinic's contract file (CSV or Parquet).")],
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Ledger and node state (default: the kit's state folder)."),
    ] = None,
    superlink: Annotated[
        str | None, typer.Option(help="Coordinator host:port (default: the kit's).")
    ] = None,
    port: Annotated[
        int, typer.Option(help="The node's local runtime port (distinct per node on a host).")
    ] = DEFAULT_NODE_PORT,
    epsilon_cap: Annotated[
        float, typer.Option(help="Lifetime ε cap of a new ledger.")
    ] = DEFAULT_EPSILON_CAP,
    public_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="A training-set size this clinic declares public (else a DP estimate is "
            "charged once per file).",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of policy keys bounding what a run may ask (accept-tasks, "
            "accept-max-layers, accept-max-width, max-epsilon-per-run, min-noise-multiplier, "
            "max-rounds-per-run, max-eval-epsilon); default: docs/privacy.md's defaults."
        ),
    ] = None,
) -> None:
    """Validate DATA against the contract, then connect to the coordinator over TLS with
    the kit's key. Refuses to start on a file that fails the contract."""
    if not data.is_file():
        raise UserError(f"--data {data}: no such file")
    if not epsilon_cap > 0:
        raise UserError(f"--epsilon-cap must be positive, got {epsilon_cap}")
    clinic_kit = ClinicKit.load(kit)
    options = SuperNodeOptions(
        kit,
        data,
        state_dir,
        superlink,
        port,
        epsilon_cap,
        public_size,
        read_policy(policy) if policy else ClinicPolicy(),
    )
    node = options.clinic_node(clinic_kit)
    checked = check_clinic_data(node)
    console.print(
        f"{data}: {checked.rows_read} rows read, {checked.rows_rejected} rejected; "
        f"{checked.n_train} training and {checked.n_test} test research-tier rows"
    )
    process = start_supernode(options, clinic_kit, node)
    address = options.superlink or clinic_kit.superlink
    console.print(
        f"Clinic node [bold]{node.clinic_id}[/] started for {address} (TLS, node key "
        f"{clinic_kit.private_key(kit)}); log {node.state_dir / 'supernode.log'}"
    )
    code = supervise(process, node.state_dir / "supernode.pid")
    if code:
        raise UserError(
            f"the clinic node exited with code {code}; see {node.state_dir / 'supernode.log'} "
            "('Failed to activate SuperNode': this kit's key is not registered or was removed)"
        )
