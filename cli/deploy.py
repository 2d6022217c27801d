"""``oralfed deploy``: provision a deployed federation (CA, coordinator certificate, kits)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from oralfed.cli.output import console, print_json
from oralfed.deploy.federation_dir import (
    DEFAULT_IP_ADDRESSES,
    DEFAULT_PORT,
    DEFAULT_SERVER_NAMES,
    FederationPaths,
)
from oralfed.deploy.provisioning import add_clinic, init_federation, list_clinics, remove_clinic

app = typer.Typer(
    help="Provision a deployed federation: CA, coordinator TLS certificate, clinic kits.",
    no_args_is_help=True,
)

FederationDir = Annotated[
    Path,
    typer.Option(
        "--federation-dir",
        "-f",
        envvar="ORALFED_FEDERATION_DIR",
        help="The federation folder made by `oralfed deploy init`.",
    ),
]
DEFAULT_FEDERATION_DIR = Path("federation")


@app.command()
def init(
    federation: Annotated[str, typer.Option(help="Federation name.")],
    out: Annotated[Path, typer.Option(help="New folder for the federation (CA key stays here).")],
    server_name: Annotated[
        list[str] | None,
        typer.Option(help="DNS name of the coordinator (repeatable; default localhost)."),
    ] = None,
    ip_address: Annotated[
        list[str] | None,
        typer.Option(help="IP address of the coordinator (repeatable; default 127.0.0.1)."),
    ] = None,
    port: Annotated[int, typer.Option(help="The SuperLink's port.")] = DEFAULT_PORT,
) -> None:
    """Create the federation's CA, the coordinator's TLS certificate and its config."""
    config = init_federation(
        federation,
        out,
        server_name or list(DEFAULT_SERVER_NAMES),
        ip_address or list(DEFAULT_IP_ADDRESSES),
        port,
    )
    paths = FederationPaths(out)
    console.print(f"Federation [bold]{config.name}[/] created in {out}")
    console.print(f"  CA certificate:      {paths.ca_cert} (key stays in {paths.ca_key.parent})")
    console.print(f"  coordinator address: {config.address}")
    names = ", ".join(config.server_names + config.ip_addresses)
    console.print(f"  certificate names:   {names}")
    console.print("Next: `oralfed deploy add-clinic NAME --federation-dir " + f"{out}`")


@app.command("add-clinic")
def add_clinic_command(
    name: Annotated[str, typer.Argument(help="Clinic id (A-Z, a-z, 0-9, '_', '-').")],
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
    dataset_id: Annotated[
        str | None,
        typer.Option(help="The clinic's data set identity for its ledger (default: NAME)."),
    ] = None,
) -> None:
    """Create NAME's startup kit and register its node key (now, or at `server start`)."""
    entry = add_clinic(federation_dir, name, dataset_id)
    kit = FederationPaths(federation_dir).kit(name)
    console.print(f"Startup kit for [bold]{name}[/]: {kit}  (key {entry.fingerprint})")
    if entry.status == "registered":
        console.print(f"Registered with the running SuperLink as node {entry.node_id}.")
    else:
        console.print("The SuperLink is not running: the key is registered at `server start`.")
    console.print("Hand the kit folder to the clinic's IT only; its README has the commands.")


@app.command("remove-clinic")
def remove_clinic_command(
    name: Annotated[str, typer.Argument(help="Clinic id.")],
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
) -> None:
    """Revoke NAME: unregister its node key; its node can no longer connect."""
    remove_clinic(federation_dir, name)
    console.print(f"Clinic [bold]{name}[/] removed; its key is no longer accepted.")


@app.command("list")
def list_command(
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Clinics with their key fingerprints, when they were added, and their status."""
    entries = list_clinics(federation_dir)
    if as_json:
        print_json([asdict(entry) for entry in entries])
        return
    table = Table(title=f"Clinics of {federation_dir}")
    for column in ("clinic", "key fingerprint", "added", "status", "node id"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            entry.name,
            entry.fingerprint,
            entry.added,
            entry.status,
            "-" if entry.node_id is None else str(entry.node_id),
        )
    console.print(table)
