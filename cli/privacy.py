"""``oralfed privacy``: the planning calculator the ledger itself uses."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from oralfed.cli.output import UserError, console, print_json
from oralfed.privacy.accountants import ACCOUNTANTS, DEFAULT_ACCOUNTANT
from oralfed.privacy.calibration import dpsgd_epsilon, noise_multiplier_for_epsilon

app = typer.Typer(help="Plan and inspect privacy budgets.", no_args_is_help=True)


@app.command()
def epsilon(
    sample_rate: Annotated[
        float, typer.Option(help="Poisson sampling rate q (batch size / records).")
    ],
    steps: Annotated[int, typer.Option(help="Number of DP-SGD steps.")],
    delta: Annotated[float, typer.Option(help="δ, well below 1/records.")],
    noise_multiplier: Annotated[
        float | None, typer.Option(help="σ: noise std / clipping norm.")
    ] = None,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Find the σ that reaches this ε instead.")
    ] = None,
    accountant: Annotated[
        str, typer.Option(help=f"One of: {', '.join(ACCOUNTANTS)}.")
    ] = DEFAULT_ACCOUNTANT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """ε of a DP-SGD plan, or (with --target-epsilon) the noise multiplier that reaches it."""
    if (noise_multiplier is None) == (target_epsilon is None):
        raise UserError("give exactly one of --noise-multiplier and --target-epsilon")
    if accountant not in ACCOUNTANTS:
        raise UserError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    try:
        if noise_multiplier is None:
            assert target_epsilon is not None
            noise_multiplier = noise_multiplier_for_epsilon(
                target_epsilon, sample_rate, steps, delta, accountant
            )
        value = dpsgd_epsilon(noise_multiplier, sample_rate, steps, delta, accountant)
    except ValueError as error:
        raise UserError(str(error)) from None
    result = {
        "epsilon": value,
        "delta": delta,
        "accountant": accountant,
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        "steps": steps,
    }
    if target_epsilon is not None:
        result["target_epsilon"] = target_epsilon
    if as_json:
        print_json(result)
        return
    table = Table(show_header=False, title="DP-SGD privacy plan")
    for key, item in result.items():
        table.add_row(
            key.replace("_", " "), f"{item:.6g}" if isinstance(item, float) else str(item)
        )
    console.print(table)
