"""Which random stream feeds which stage of one clinic's export (the determinism contract).

Keyed by the seed and the clinic id (not by position), so clinic ``k`` is the same whatever
the federation size; split by stage, so that injecting faults never changes the clean cells
of the other rows, and re-deriving the calibration sees exactly the generated features.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

__all__ = ["ClinicStreams", "clinic_streams"]


class ClinicStreams(NamedTuple):
    """Independent seed sequences for the stages of one clinic's rows."""

    features: np.random.SeedSequence
    outcomes: np.random.SeedSequence
    cells: np.random.SeedSequence
    faults: np.random.SeedSequence


def clinic_streams(clinic_id: str, seed: int) -> ClinicStreams:
    """The four streams of clinic ``clinic_id`` under ``seed``."""
    key = zlib.crc32(clinic_id.encode("utf-8"))
    return ClinicStreams(*np.random.SeedSequence([seed, 0xDA7A, key]).spawn(4))
