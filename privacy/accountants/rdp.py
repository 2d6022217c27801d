"""Rényi DP accounting (dp-accounting): looser than PLD, the robust fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from dp_accounting.rdp import RdpAccountant as DpAccountingRdpAccountant

from oralfed.privacy.accountants.base import Accountant
from oralfed.privacy.events import PrivacyEvent, to_dp_event


class RdpAccountant(Accountant):
    """Composition in Rényi divergence, converted to (ε, δ) at the best order.

    Cheap and numerically simple, but its ε is an over-estimate (typically 5-30 % above PLD),
    so a budget spent under RDP lasts fewer rounds. Use it to cross-check or where the
    tighter accountants are unavailable.
    """

    name: ClassVar[str] = "rdp"

    def _epsilon(self, events: Sequence[PrivacyEvent], delta: float) -> float:
        accountant = DpAccountingRdpAccountant()
        for event in events:
            accountant.compose(to_dp_event(event))
        return float(accountant.get_epsilon(delta))
