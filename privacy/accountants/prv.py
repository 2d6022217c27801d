"""Privacy Random Variable accounting via Opacus, the accountant Opacus itself recommends.

Opacus imports torch, which the privacy package must not pull in at import time (it is
used by light processes such as the ledger CLI), so the import happens on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from oralfed.privacy.accountants.base import Accountant, UnsupportedEvent
from oralfed.privacy.events import DpSgdEvent, GaussianEvent, PrivacyEvent


class PrvAccountant(Accountant):
    """Numerical composition of privacy random variables (Gopi et al. 2021), via Opacus.

    Opacus models only Poisson-subsampled Gaussian steps; a Gaussian release is the same
    mechanism with sample rate 1. The Laplace mechanism and the discrete mechanisms are not
    supported.
    """

    name: ClassVar[str] = "prv"

    def _epsilon(self, events: Sequence[PrivacyEvent], delta: float) -> float:
        from opacus.accountants import PRVAccountant

        accountant = PRVAccountant()
        accountant.history = [_history_entry(event) for event in events]
        # With sample rate 1, Opacus evaluates log(1 - q) = -inf as the lower end of the
        # loss support; that is the correct limit, so numpy's divide warning is noise.
        with np.errstate(divide="ignore"):
            return float(accountant.get_epsilon(delta))


def _history_entry(event: PrivacyEvent) -> tuple[float, float, int]:
    """Opacus' ``(noise_multiplier, sample_rate, steps)`` triple for one event."""
    if isinstance(event, DpSgdEvent):
        return (event.noise_multiplier, event.sample_rate, event.steps)
    if isinstance(event, GaussianEvent):
        return (event.noise_multiplier, 1.0, event.count)
    raise UnsupportedEvent(
        f"the prv accountant handles only DP-SGD and Gaussian events, not {event!r}; "
        "use the pld or rdp accountant for histories with Laplace or discrete releases"
    )
