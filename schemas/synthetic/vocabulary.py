"""The contract's category words, in the order whose positions the generator uses as codes.

The cohort stores categories as small integers and the ground-truth model tests them by
position (smoking 1 = former, 2 = current; water 1 = no, 2 = unknown; sex 1 = male), so
these tuples are taken from the contract's enums, the one place that defines the words, and
their order is pinned by the tests: reordering an enum must fail loudly, not silently
change the risk model.
"""

from __future__ import annotations

from typing import Final

from oralfed.schemas.contract import (
    ConsentTier,
    FluoridatedWater,
    Periodontitis,
    Sex,
    SmokingStatus,
)

__all__ = [
    "CONSENT_TIERS",
    "PERIODONTITIS_STAGES",
    "SEXES",
    "SMOKING_STATUSES",
    "WATER_STATUSES",
]

SEXES: Final[tuple[str, ...]] = tuple(member.value for member in Sex)
SMOKING_STATUSES: Final[tuple[str, ...]] = tuple(member.value for member in SmokingStatus)
WATER_STATUSES: Final[tuple[str, ...]] = tuple(member.value for member in FluoridatedWater)
PERIODONTITIS_STAGES: Final[tuple[str, ...]] = tuple(member.value for member in Periodontitis)
CONSENT_TIERS: Final[tuple[str, ...]] = tuple(member.value for member in ConsentTier)
