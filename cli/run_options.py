"""What ``oralfed federate`` (simulated) and ``oralfed federation launch`` (deployed) share:
turning training options into validated settings, and a fresh run folder."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import UserError
from server.settings import FederationSettings, SettingsError

DEFAULT_TARGET_EPSILON = 3.0


def new_run_folder(out: Path | None) -> Path:
    """``out``, or ``runs/<UTC time>``; refused if it already holds files (nothing is lost)."""
    folder = out or Path("runs") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"--out {folder} already holds files; choose a new folder")
    return folder


def federation_settings(
    *, target_epsilon: float | None, noise_multiplier: float | None, **options: Any
) -> FederationSettings:
    """Settings from CLI options; a target ε of 3 per clinic unless σ is fixed instead."""
    if target_epsilon is not None and noise_multiplier is not None:
        raise UserError("give at most one of --target-epsilon and --noise-multiplier")
    if target_epsilon is None and noise_multiplier is None:
        target_epsilon = DEFAULT_TARGET_EPSILON
    try:
        return FederationSettings(
            target_epsilon=target_epsilon, noise_multiplier=noise_multiplier, **options
        )
    except SettingsError as error:
        raise UserError(str(error)) from None


# The training options both commands take, declared once (Typer reads the Annotated alias).
Rounds = Annotated[int, typer.Option(min=1, help="Federation rounds.")]
TargetEpsilon = Annotated[
    float | None, typer.Option(help="ε per clinic over the whole run (default 3).")
]
NoiseMultiplier = Annotated[float | None, typer.Option(help="Fixed σ instead of a target ε.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Expected DP-SGD batch size.")]
LocalEpochs = Annotated[int, typer.Option(min=1, help="Local epochs per round.")]
LearningRate = Annotated[float, typer.Option(help="Clinic learning rate (SGD, momentum 0.9).")]
ClipNorm = Annotated[float, typer.Option(help="Per-sample gradient clipping norm C.")]
Strategy = Annotated[str, typer.Option(help="fedavg or fedprox.")]
ProximalMu = Annotated[float, typer.Option(help="FedProx μ.")]
DpEngine = Annotated[
    str,
    typer.Option(
        help="DP-SGD engine at the clinics: fast (default) or opacus (Opacus make_private, "
        "the slower reference); the same mechanism, so the same ε."
    ),
]
MinClinics = Annotated[int, typer.Option(min=1, help="Stop if fewer clinics train in a round.")]
