"""``oralfed model``: use a trained global model where the data is."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from oralfed.cli.output import console
from oralfed.schemas.features import encode_features
from oralfed.schemas.files import write_text_atomically
from oralfed.schemas.importer import (
    default_quarantine_path,
    import_file,
    write_quarantine,
)
from oralfed.schemas.model import load_model

app = typer.Typer(
    help="Score patients with a trained model (locally: nothing leaves this machine).",
    no_args_is_help=True,
)


@app.command()
def score(
    model_file: Annotated[
        Path, typer.Argument(metavar="MODEL", help="A model saved by `oralfed federate`.")
    ],
    file: Annotated[Path, typer.Argument(help="A contract CSV or Parquet file.")],
    out: Annotated[Path, typer.Option(help="CSV of patient_ref,risk.")],
) -> None:
    """Write a risk probability per accepted row of FILE, keyed by patient_ref."""
    model, task, _ = load_model(model_file)
    result = import_file(file)
    risks: Sequence[float] | np.ndarray = (
        model.predict_proba(encode_features(result.accepted)) if result.accepted else []
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("patient_ref", f"{task.value}_risk"))
    for record, risk in zip(result.accepted, risks, strict=True):
        writer.writerow((record.patient_ref, f"{float(risk):.6f}"))
    write_text_atomically(out, buffer.getvalue())
    console.print(
        f"scored {result.rows_accepted} of {result.rows_read} rows ({task.value}) → {out}"
    )
    if result.rejected:
        quarantine = write_quarantine(result, default_quarantine_path(out))
        console.print(f"[yellow]{result.rows_rejected} row(s) rejected[/], reasons in {quarantine}")
