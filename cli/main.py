"""The ``oralfed`` command: one sub-command group per user of the platform."""

from __future__ import annotations

import typer

from oralfed.cli import (
    audit,
    clinic_cmd,
    dashboard,
    data,
    deploy,
    federation_cmd,
    insights,
    model,
    privacy,
    schema,
    server_cmd,
)
from oralfed.cli.errors import fail
from oralfed.cli.federate import federate
from oralfed.schemas.errors import OralFedError

app = typer.Typer(
    name="oralfed",
    help="OralFed: privacy-preserving federated oral-health risk models for dental clinics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(schema.app, name="schema")
app.add_typer(privacy.app, name="privacy")
app.add_typer(audit.app, name="audit")
app.add_typer(model.app, name="model")
app.add_typer(insights.app, name="insights")
app.command(name="federate")(federate)
app.add_typer(deploy.app, name="deploy")
app.add_typer(server_cmd.app, name="server")
app.add_typer(clinic_cmd.app, name="clinic")
app.add_typer(federation_cmd.app, name="federation")
app.add_typer(dashboard.app, name="dashboard")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every refusal becomes one clear message and its exit code."""
    try:
        app(args=argv)
    except OralFedError as error:
        fail(error)
