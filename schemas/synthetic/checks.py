"""Argument checks of the generator's entry points, and the error they raise.

The same three settings (number of clinics, seed, share of bad rows) reach the generator
from the CLI, the benchmarks and the tests. Checking them once, before numpy sees them,
turns "negative dimensions are not allowed" deep in a sampler into a message that names the
setting; nothing is written when a check fails.
"""

from __future__ import annotations

from numbers import Real
from typing import ClassVar

import numpy as np

from oralfed.schemas.errors import ExitCode, OralFedError

__all__ = ["SyntheticDataError", "check_fraction", "check_n_clinics", "check_seed"]


class SyntheticDataError(OralFedError, ValueError):
    """A generator setting (clinic count, seed, bad-row share, profile field) is invalid.

    Also a ``ValueError``: the generator raised plain ``ValueError`` before OralFed had one
    error root, and callers that catch that must keep working.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE


def check_n_clinics(n_clinics: int) -> None:
    """Refuse a number of clinics that is not a whole number of at least one."""
    if isinstance(n_clinics, bool) or not isinstance(n_clinics, int | np.integer):
        raise SyntheticDataError(
            f"n_clinics (number of clinics) must be an integer >= 1, got {n_clinics!r}"
        )
    if n_clinics < 1:
        raise SyntheticDataError(
            f"n_clinics (number of clinics) must be at least 1, got {n_clinics}"
        )


def check_seed(seed: int) -> None:
    """Refuse a seed ``numpy.random.SeedSequence`` would reject (or silently coerce)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SyntheticDataError(f"seed must be a non-negative integer, got {seed!r}")


def check_fraction(bad_row_fraction: float) -> None:
    """Refuse a bad-row share outside [0, 0.5]: beyond half, 'bad' rows are the norm."""
    if (
        isinstance(bad_row_fraction, bool)
        or not isinstance(bad_row_fraction, Real)
        or not 0.0 <= float(bad_row_fraction) <= 0.5
    ):
        raise SyntheticDataError(
            f"bad_row_fraction must be a number in [0, 0.5] (share of rows to break), "
            f"got {bad_row_fraction!r}"
        )
