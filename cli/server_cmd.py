"""``oralfed server``: run the coordinator (a Flower SuperLink with TLS and node auth)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from oralfed.cli.deploy import DEFAULT_FEDERATION_DIR, FederationDir
from oralfed.cli.output import UserError, console, error_console
from oralfed.deploy.federation_dir import FederationConfig
from oralfed.deploy.processes import Supervised, stop_process_group, supervise
from oralfed.deploy.provisioning import register_pending
from oralfed.deploy.superlink import (
    SUPERLINK_LOG,
    SuperLinkOptions,
    start_superlink,
    wait_until_ready,
)
from oralfed.schemas.state import coordinator_state_dir
from oralfed.server.app import COORDINATOR_URL_ENV
from oralfed.server.coordinator_db import CoordinatorStore

app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)


@app.command()
def start(
    federation_dir: FederationDir = DEFAULT_FEDERATION_DIR,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="SuperLink database, logs and coordinator database "
            "(default <state root>/coordinator: ORALFED_HOME, else ~/.oralfed)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (the port is the federation's).")
    ] = "0.0.0.0",
    coordinator_url: Annotated[
        str | None,
        typer.Option(
            envvar=COORDINATOR_URL_ENV,
            help="Coordinator database (SQLAlchemy URL, e.g. postgresql+psycopg://…): its "
            "schema is upgraded now and runs record into it (default: SQLite per run).",
        ),
    ] = None,
    dev: Annotated[bool, typer.Option(help="Development mode: allows --insecure.")] = False,
    insecure: Annotated[
        bool, typer.Option(help="Plaintext, no node auth (only with --dev; never in production).")
    ] = False,
    persist_superlink_state: Annotated[
        bool,
        typer.Option(
            help="Keep Flower's SuperLink state (runs, node keys, messages in flight) in "
            "superlink.db across restarts; by default it is in memory and every clinic of the "
            "federation folder is registered again at each start (docs/deployment.md, Speed)."
        ),
    ] = False,
) -> None:
    """Start the SuperLink in the foreground; once it listens, every clinic key of the
    federation folder is registered (only pending ones when its state persists). Stop it with
    Ctrl-C or SIGTERM (every child process is stopped too)."""
    if insecure and not dev:
        raise UserError("--insecure is only allowed together with --dev (never in production)")
    if insecure:
        error_console.print(
            "[bold yellow]WARNING:[/] --insecure: no TLS and no node authentication; anyone "
            "on the network can read the traffic and join. Development only."
        )
    config = FederationConfig.load(federation_dir)
    if coordinator_url:
        try:
            CoordinatorStore(coordinator_url).close()  # create or upgrade its schema now
        except SQLAlchemyError as error:
            raise UserError(
                f"--coordinator-url: cannot open the coordinator database: {error}"
            ) from None
    state_dir = state_dir or coordinator_state_dir()
    options = SuperLinkOptions(
        fed_dir=federation_dir,
        state_dir=state_dir,
        host=host,
        insecure=insecure,
        coordinator_url=coordinator_url,
        persist_state=persist_superlink_state,
    )
    process = start_superlink(options)
    try:
        wait_until_ready(process, config)
        if not insecure:
            for entry in register_pending(federation_dir, again=not persist_superlink_state):
                console.print(f"registered clinic {entry.name} as node {entry.node_id}")
    except BaseException:
        stop_process_group(process)
        raise
    console.print(
        f"SuperLink for [bold]{config.name}[/] on {host}:{config.port} "
        f"({'INSECURE' if insecure else 'TLS, node authentication'}); "
        f"log {state_dir / SUPERLINK_LOG}"
    )
    _, code = supervise([Supervised("superlink", process, state_dir / "superlink.pid")])
    if code:
        raise UserError(f"the SuperLink exited with code {code}; see {state_dir / SUPERLINK_LOG}")
