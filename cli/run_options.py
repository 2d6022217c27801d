"""What ``oralfed federate`` (simulated) and ``oralfed federation launch`` (deployed) share:
turning training options into validated settings, and a fresh run folder."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
