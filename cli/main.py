"""The ``oralfed`` command: one sub-command group per user of the platform."""

from __future__ import annotations

import typer

from cli import data, model, privacy, schema
from cli.federate import federate
from cli.output import UserError, fail
from client.data import ClinicDataError
from client.model import ModelFormatError
from privacy.ledger import LedgerError
from schemas.importer import ContractError

app = typer.Typer(
    name="oralfed",
    help="OralFed: privacy-preserving federated oral-health risk models for dental clinics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(schema.app, name="schema")
app.add_typer(privacy.app, name="privacy")
app.add_typer(model.app, name="model")
app.command(name="federate")(federate)

USER_ERRORS = (UserError, ContractError, ClinicDataError, ModelFormatError, LedgerError)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one clear message and exit code 2."""
    try:
        app(args=argv)
    except USER_ERRORS as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; every process this command started has been stopped", code=130)
