"""dp-accounting's subsampled Gaussian privacy loss, with its hockey-stick divergence
computed for all the PLD's grid points at once.

Building the PLD of one DP-SGD step (``from_gaussian_mechanism``) evaluates the divergence
at every point of its grid, tens of thousands, and dp-accounting 0.6 finds each point's
inverse privacy loss in a Python call of its own
(``AdditiveNoisePrivacyLoss.get_delta_for_epsilon``). That loop is nearly all of the build's
0.3 s, and a ledger composing thousands of clinics' histories builds one per clinic. The
inverse has a closed form for the Gaussian (for add or remove adjacency and q < 1:
``log(a e^b + c)`` with a = 1/q, c = 1 - 1/q, then a linear map), so
:class:`VectorisedGaussianPrivacyLoss` computes it with numpy over the whole grid, using the
same formulas in the same order. Points on the boundaries dp-accounting treats apart
(``math.isclose`` to ±log(1 - q), a zero exponent) are handed to dp-accounting's own scalar
code. The PLD is then assembled by dp-accounting exactly as ``from_gaussian_mechanism``
assembles it; a test checks the result against dp-accounting's own PLD.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from dp_accounting.pld import privacy_loss_distribution, privacy_loss_mechanism
from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution

__all__ = ["VectorisedGaussianPrivacyLoss", "subsampled_gaussian_distribution"]

_ADD = privacy_loss_mechanism.AdjacencyType.ADD
_REMOVE = privacy_loss_mechanism.AdjacencyType.REMOVE
_ISCLOSE_RELATIVE = 1e-9  # math.isclose's default, which dp-accounting uses


class VectorisedGaussianPrivacyLoss(privacy_loss_mechanism.GaussianPrivacyLoss):
    """``GaussianPrivacyLoss`` whose ``get_delta_for_epsilon`` takes a grid in one pass."""

    def get_delta_for_epsilon(self, epsilon: float | Sequence[float]) -> float | np.ndarray:
        if (
            isinstance(epsilon, numbers.Number)
            or self.sampling_prob == 1.0
            or self.adjacency_type not in (_ADD, _REMOVE)
        ):
            return super().get_delta_for_epsilon(epsilon)
        epsilons = np.asarray(epsilon, dtype=float)
        deltas = np.zeros_like(epsilons)
        if self.adjacency_type == _ADD:  # the divergence is 0 at or beyond -log(1 - q)
            inverse = epsilons < -math.log1p(-self.sampling_prob)
        else:  # and 1 - e^ε at or below log(1 - q)
            inverse = epsilons > math.log1p(-self.sampling_prob)
            deltas[~inverse] = -np.expm1(epsilons[~inverse])
        cutoffs = self._inverse_privacy_losses(epsilons[inverse])
        deltas[inverse] = self.mu_upper_cdf(cutoffs) - np.exp(
            epsilons[inverse] + self.mu_lower_log_cdf(cutoffs)
        )
        return np.clip(deltas, 0, 1)

    def _inverse_privacy_losses(self, privacy_losses: np.ndarray) -> np.ndarray:
        """``inverse_privacy_loss`` of each value, as dp-accounting computes it."""
        q = self.sampling_prob
        adding = self.adjacency_type == _ADD
        boundary = -math.log(1 - q) if adding else math.log(1 - q)
        exponent = -privacy_losses if adding else privacy_losses
        # log(a e^b + c) for a = 1/q > 0 and c = 1 - 1/q < 0 (common.log_a_times_exp_b_plus_c)
        d = exponent + np.log(1 / q)
        log_minus_c = np.log(-(1 - 1 / q))
        apart = (
            (exponent == 0)
            | (np.abs(privacy_losses - boundary) <= _ISCLOSE_RELATIVE * np.maximum(
                np.abs(privacy_losses), abs(boundary)))
            | (log_minus_c >= d)
        )  # fmt: skip
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = d + np.log1p(-np.exp(log_minus_c - d))
        if adding:
            loss = -loss
        sigma, sensitivity = self._standard_deviation, self.sensitivity
        cutoffs = -0.5 * sensitivity - loss * (sigma**2) / sensitivity
        if adding:
            cutoffs = sensitivity + cutoffs
        cutoffs[apart] = [self.inverse_privacy_loss(float(x)) for x in privacy_losses[apart]]
        return cutoffs


def subsampled_gaussian_distribution(
    noise_multiplier: float, sample_rate: float, interval: float
) -> PrivacyLossDistribution:
    """``from_gaussian_mechanism(noise_multiplier, sampling_prob=sample_rate,
    value_discretization_interval=interval)`` with dp-accounting's defaults otherwise
    (pessimistic, connect-the-dots, truncation at log mass -50, add or remove one),
    assembled from :class:`VectorisedGaussianPrivacyLoss`."""

    def pmf(adjacency: privacy_loss_mechanism.AdjacencyType) -> object:
        return privacy_loss_distribution._create_pld_pmf_from_monotone_privacy_loss(
            VectorisedGaussianPrivacyLoss(
                noise_multiplier,
                sensitivity=1,
                pessimistic_estimate=True,
                log_mass_truncation_bound=-50,
                sampling_prob=sample_rate,
                adjacency_type=adjacency,
            ),
            pessimistic_estimate=True,
            value_discretization_interval=interval,
            use_connect_dots=True,
        )

    return privacy_loss_distribution._pld_for_subsampled_mechanism(pmf, sample_rate)
