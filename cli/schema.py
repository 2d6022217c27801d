"""``oralfed schema``: the contract as JSON Schema, for clinics' export tooling."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from oralfed.cli.output import console
from oralfed.schemas.contract import PatientRecord
from oralfed.schemas.files import write_text_atomically

app = typer.Typer(help="The clinic data contract.", no_args_is_help=True)


@app.command()
def export(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Write the JSON Schema of one contract record."""
    text = json.dumps(PatientRecord.model_json_schema(mode="validation"), indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        write_text_atomically(out, text)
        console.print(f"wrote {out}")
