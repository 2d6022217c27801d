"""Interchangeable privacy accountants, chosen by name.

Every accountant answers the same question (ε of a whole event history at δ) so that the
ledger, calibration and reports can switch between them by a configuration string.
"""

from __future__ import annotations

from oralfed.privacy.accountants.base import Accountant, UnsupportedEvent, validate_delta
from oralfed.privacy.accountants.pld import PldAccountant
from oralfed.privacy.accountants.prv import PrvAccountant
from oralfed.privacy.accountants.rdp import RdpAccountant

ACCOUNTANTS: dict[str, type[Accountant]] = {
    cls.name: cls for cls in (PldAccountant, PrvAccountant, RdpAccountant)
}
DEFAULT_ACCOUNTANT = PldAccountant.name


def get_accountant(name: str) -> Accountant:
    """A fresh accountant for ``name``; ``ValueError`` naming the valid choices otherwise."""
    try:
        return ACCOUNTANTS[name]()
    except KeyError:
        raise ValueError(
            f"unknown accountant {name!r}; choose one of {', '.join(sorted(ACCOUNTANTS))}"
        ) from None


__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ACCOUNTANT",
    "Accountant",
    "PldAccountant",
    "PrvAccountant",
    "RdpAccountant",
    "UnsupportedEvent",
    "get_accountant",
    "validate_delta",
]
