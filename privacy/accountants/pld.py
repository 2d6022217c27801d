"""Privacy Loss Distribution accounting (dp-accounting): tight, and the ledger's default."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from dp_accounting.pld import PLDAccountant, pld_pmf
from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution

from oralfed.privacy.accountants.base import Accountant
from oralfed.privacy.accountants.gaussian_loss import subsampled_gaussian_distribution
from oralfed.privacy.events import (
    DiscreteGaussianEvent,
    DpSgdEvent,
    PrivacyEvent,
    repetitions,
    to_dp_event,
)

# dp-accounting's truncation of the discrete Gaussian: the mass beyond ±11.6σ is below 1e-30
# (Canonne, Kamath and Steinke 2020), far under any δ and under float64's resolution of 1.
_TRUNCATION_SIGMAS = 11.6
# Points of the noise's support handled at once: bounds memory for very wide noise.
_CHUNK = 1 << 20
# dp-accounting's PLDAccountant default, which every PLD built here uses too.
_DISCRETIZATION = 1e-4
# A calibration searches a dozen noise levels for the one it keeps; it searches on this grid
# (12x faster to build here, and with connect-the-dots within 1e-4 of the fine grid's ε for
# DP-SGD) and confirms the level it keeps on the fine grid.
_SCREENING_DISCRETIZATION = 1e-3


class PldAccountant(Accountant):
    """Numerical composition of privacy loss distributions (Koskela et al.; Google).

    Handles every event type, mixed in one history, and gives a pessimistic (upper-bound)
    ε that agrees with Opacus' PRV accountant to about 0.01.
    """

    name: ClassVar[str] = "pld"

    def _epsilon(self, events: Sequence[PrivacyEvent], delta: float) -> float:
        return _composed_pld_epsilon(events, delta, _DISCRETIZATION)

    def _screening_epsilon(self, events: Sequence[PrivacyEvent], delta: float) -> float:
        """The same composition on a coarser grid: still a pessimistic bound, a little
        looser, for the levels a search tries and drops."""
        return _composed_pld_epsilon(events, delta, _SCREENING_DISCRETIZATION)


def _composed_pld_epsilon(events: Sequence[PrivacyEvent], delta: float, interval: float) -> float:
    """ε at ``delta`` of ``events`` composed as PLDs on a grid of ``interval``."""
    accountant = _PldComposer(value_discretization_interval=interval)
    for event in events:
        if isinstance(event, DiscreteGaussianEvent):
            pld = discrete_gaussian_pld(event.sigma, event.sensitivity, interval)
            accountant.compose_pld(pld.self_compose(event.count))
        elif isinstance(event, DpSgdEvent) and event.noise_multiplier > 0:
            sigma, rate = event.noise_multiplier, event.sample_rate
            step = (  # a search tries each level once: only the fine grid's steps are kept
                subsampled_gaussian_pld(sigma, rate)
                if interval == _DISCRETIZATION
                else _gaussian_step(sigma, rate, interval)
            )
            accountant.compose_pld(step.self_compose(repetitions(event)))
        else:
            accountant.compose(to_dp_event(event))
    return float(accountant.get_epsilon(delta))


class _PldComposer(PLDAccountant):
    """dp-accounting's PLD accountant, also taking a PLD built here for a mechanism it has
    no DpEvent for; composing PLDs is exactly what it does with its own events."""

    _pld: PrivacyLossDistribution  # the composition so far, kept by dp-accounting

    def compose_pld(self, pld: PrivacyLossDistribution) -> None:
        self._pld = self._pld.compose(pld)


def _gaussian_step(
    noise_multiplier: float, sample_rate: float, interval: float
) -> PrivacyLossDistribution:
    """One step of DP-SGD, exactly as dp-accounting's PLD accountant builds it for a
    ``PoissonSampledDpEvent`` of a ``GaussianDpEvent`` (then self-composed per step), its
    grid evaluated at once (``oralfed.privacy.accountants.gaussian_loss``)."""
    return subsampled_gaussian_distribution(noise_multiplier, sample_rate, interval)


@functools.lru_cache(maxsize=128)
def subsampled_gaussian_pld(noise_multiplier: float, sample_rate: float) -> PrivacyLossDistribution:
    """:func:`_gaussian_step`, remembered: building it is most of a composition's cost
    (0.05 s here) and the same (σ, q) recurs in every history of a run: the ledger's budget,
    its charge and the run's bound each compose one. The PLD is immutable and a pure
    function of its arguments; a process keeps the last 128 (a few hundred kB each), enough
    for the sizes on the grid a simulated federation's clinics share
    (``oralfed.client.public_size.on_size_grid``)."""
    return _gaussian_step(noise_multiplier, sample_rate, _DISCRETIZATION)


def discrete_gaussian_pld(
    sigma: float, sensitivity: int, value_discretization_interval: float = _DISCRETIZATION
) -> PrivacyLossDistribution:
    """The pessimistic PLD of N_Z(0, σ²) against N_Z(``sensitivity``, σ²).

    The same privacy buckets as dp-accounting's ``from_discrete_gaussian_mechanism`` (same
    truncation, each loss rounded up to the discretisation grid, losses where the shifted
    distribution has no mass counted as infinite), vectorised in numpy: dp-accounting
    evaluates the loss point by point in Python, which takes seconds for the σ of thousands of
    lattice units that :class:`~privacy.events.DiscreteGaussianEvent` uses, and the ledger
    recomputes every distinct event at every charge. The loss at output y is
    Δ(Δ - 2y) / (2σ²), linear in y, and the noise is symmetric, so the PLD is the same for
    adding and removing a patient.
    """
    bound = math.ceil(_TRUNCATION_SIGMAS * sigma)
    if 2 * bound < sensitivity:
        raise ValueError(f"sensitivity {sensitivity} is too large for σ = {sigma}")
    # Losses run from the value at y = bound up to the value at y = sensitivity - bound.
    lowest = _loss_bucket(np.array([bound]), sigma, sensitivity, value_discretization_interval)
    highest = _loss_bucket(
        np.array([sensitivity - bound]), sigma, sensitivity, value_discretization_interval
    )
    offset = int(lowest[0])
    masses = np.zeros(int(highest[0]) - offset + 1)
    total = infinite = 0.0
    for start in range(-bound, bound + 1, _CHUNK):
        y = np.arange(start, min(start + _CHUNK, bound + 1))
        weight = np.exp(-0.5 * (y / sigma) ** 2)
        total += float(weight.sum())
        finite = y >= sensitivity - bound  # below, the shifted distribution has no mass
        infinite += float(weight[~finite].sum())
        buckets = _loss_bucket(y[finite], sigma, sensitivity, value_discretization_interval)
        masses += np.bincount(buckets - offset, weights=weight[finite], minlength=len(masses))
    pmf = pld_pmf.DensePLDPmf(
        value_discretization_interval, offset, masses / total, infinite / total, True
    )
    return PrivacyLossDistribution(pmf)


def _loss_bucket(y: np.ndarray, sigma: float, sensitivity: int, interval: float) -> np.ndarray:
    """The grid index each output's privacy loss is rounded up to (pessimistic)."""
    loss = sensitivity * (sensitivity - 2.0 * y) / (2.0 * sigma**2)
    return np.ceil(loss / interval).astype(np.int64)
