"""One interface over interchangeable privacy accountants, in the manner of Opacus' ``IAccountant``.

An accountant turns a whole history of :mod:`privacy.events` into one ε at a given δ. It is
stateless: callers pass the full history each time, so that the ledger's stored history is
the only source of truth and nothing can drift out of step with it.

A process remembers the ε of the last histories it composed (:func:`_composed_epsilon`):
the answer is a pure function of the accountant, the whole history and δ, all of them in
the key, so it is the same arithmetic done once, not a remembered decision. A clinic's
ClientApp asks for the ε of one history several times per message (the budget shown, the
charge's recomputation under its lock, the run's bound); a PLD composition takes about a
second on these machines. Nothing is written anywhere: a process forked from one that
composed a history (the clinic runtime's template) inherits the memo, any other starts empty.
A Ray worker of a simulated federation serves thousands of clinics, whose histories repeat
wherever their sizes share a point of the size grid: the memo keeps 4,096 of them (a float
each, keyed by a few events).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from oralfed.privacy.events import PrivacyEvent, merge_identical
from oralfed.schemas.errors import ExitCode, OralFedError


class UnsupportedEvent(OralFedError, ValueError):
    """The accountant cannot analyse this mechanism (e.g. PRV and the Laplace mechanism).

    Also a ``ValueError``, as it was before OralFed had one error root: callers that catch
    that must keep working.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE


def validate_delta(delta: float) -> None:
    """Raise ``ValueError`` unless 0 < δ < 1, the only range where (ε, δ)-DP means anything."""
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


class Accountant(ABC):
    """Computes ε of the composition of a sequence of privacy events at a given δ."""

    name: ClassVar[str]

    def epsilon(self, events: Sequence[PrivacyEvent], delta: float) -> float:
        """ε of the composition of *all* ``events`` at ``delta``.

        0.0 when there are no events; ``math.inf`` when the accountant can give no finite
        bound.

        Identical events are merged first (see :func:`~privacy.events.merge_identical`), so
        implementations see each distinct mechanism once, with its total repetitions.
        """
        return self._checked(events, delta, functools.partial(_composed_epsilon, type(self)))

    def screening_epsilon(self, events: Sequence[PrivacyEvent], delta: float) -> float:
        """A quicker estimate of :meth:`epsilon`, for a search that confirms the answer it
        keeps with :meth:`epsilon` (``oralfed.privacy.calibration``); never for a charge.
        Accountants with nothing quicker give the exact ε."""
        return self._checked(events, delta, self._screening_epsilon)

    def _checked(
        self,
        events: Sequence[PrivacyEvent],
        delta: float,
        compose: Callable[[tuple[PrivacyEvent, ...], float], float],
    ) -> float:
        validate_delta(delta)
        if not events:
            return 0.0
        epsilon = compose(tuple(merge_identical(events)), delta)
        # An infinite ε (PRV's answer when its numerics give up) is safe: it exceeds every
        # cap. NaN compares false with everything and would slip past a cap check.
        if math.isnan(epsilon):
            raise ArithmeticError(f"the {self.name} accountant returned ε = NaN for {events!r}")
        return epsilon

    @abstractmethod
    def _epsilon(self, events: Sequence[PrivacyEvent], delta: float) -> float:
        """ε of the composition of distinct, non-empty ``events`` at a validated ``delta``."""

    def _screening_epsilon(self, events: Sequence[PrivacyEvent], delta: float) -> float:
        return _composed_epsilon(type(self), tuple(events), delta)


@functools.lru_cache(maxsize=4096)
def _composed_epsilon(
    accountant: type[Accountant], events: tuple[PrivacyEvent, ...], delta: float
) -> float:
    return accountant()._epsilon(events, delta)
