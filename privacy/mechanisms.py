"""Differentially private statistics: the noise a clinic adds and the error it implies.

Every query is answered from per-cell *sufficient statistics* (counts, clipped sums,
positives, bin counts). Each patient contributes to exactly one cell and, within it, to at
most one bin, so for add/remove-one-patient neighbours a count vector (or a bin-count
array) has L1 = L2 sensitivity 1 however many cells there are, and a vector of sums clipped
to ``[low, high]`` has L1 = L2 sensitivity ``max(|low|, |high|)``. Sensitivities come from
the :class:`Bounds` the caller derives from the data contract, never from the data.

Every released number is an integer plus *discrete* noise drawn by an exact sampler
(:mod:`privacy.samplers`), never a float plus float noise: ``count + rng.laplace(0, b)`` in
float64 leaks through the gaps between the floats each input can produce (Mironov 2012), so
an observer can often rule out the neighbouring count with certainty. With integers and
exact samplers every integer is a possible output of every input, with exactly the
probability the analysis assumes. The query's ``mechanism`` picks the family:

* **laplace**: counts, positives and bin counts get discrete Laplace noise of scale
  b = ``noise_multiplier``, exactly a :class:`~privacy.events.DiscreteLaplaceEvent`; sums
  (below) get scale b · :data:`~privacy.events.LATTICE_UNITS`, which the same event bounds
  from above.
* **gaussian**: every vector is computed on the lattice of
  :data:`~privacy.events.LATTICE_UNITS` (K = 1024) units per unit of sensitivity and gets
  discrete Gaussian noise of σ = ``noise_multiplier`` · K units, exactly a
  :class:`~privacy.events.DiscreteGaussianEvent`. A count is released as K · count + noise
  rounded back to whole records (half away from zero, so the noise stays symmetric and
  unbiased; rounding is post-processing).

Sums are discretised before any noise: each clipped value is snapped to the nearest
multiple of the grid unit u = sensitivity / K, an integer of at most K units, the integers
are summed per cell, the noise (integer sensitivity K) is added to the integer total, and
only then is the total scaled back by u, which is post-processing. Every sum a clinic can
release is therefore a multiple of u, whatever its data. The grid's bias: each value moves
by at most u / 2 = sensitivity / 2048, so a cell's sum is off by at most n · u / 2 and a
mean by at most u / 2 (0.054 years for ``age_years``, 0.039 for ``bmi``); values already on
the grid, such as whole ``dmft`` counts (u = 1/32), do not move at all. The error this
module reports is the noise's; the grid's bias is far below it for any cell that is shown.

A query releases one or two such vectors (always the counts, which the coordinator needs
for small-cell suppression, plus the measure's own statistic). Every vector is released
with the *same* noise multiplier relative to its own sensitivity, so the whole query is one
event with ``count`` = number of vectors: the ε budget is split equally between the parts,
and the ledger composes them exactly as the accountant would any other repeated release.

This module is numpy and the exact samplers (no torch, no Flower) and knows nothing of
records: the clinic maps its records to cell indices and values, the coordinator combines
the clinics' parts. Noisy means and proportions are ratios formed by the coordinator
(:func:`ratio`) and are not clamped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from oralfed.privacy.accountants import DEFAULT_ACCOUNTANT, get_accountant, validate_delta
from oralfed.privacy.calibration import noise_multiplier_for_epsilon
from oralfed.privacy.events import (
    LATTICE_UNITS,
    DiscreteGaussianEvent,
    DiscreteLaplaceEvent,
    PrivacyEvent,
)
from oralfed.privacy.samplers import IntArray, discrete_gaussian, discrete_laplace

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile
# A clinic's parts for a cell are released from its records only when its *noisy* count is at
# least this (issue 5: "a group with fewer than 10 records at a clinic contributes nothing").
CLINIC_MIN_RECORDS = 10
QUANTILE_BOOTSTRAP_DRAWS = 400
# Calibration raises the continuous Gaussian's multiplier in these steps until the discrete
# event itself fits the budget (their ε differ by about 0.01 %).
_DISCRETE_CALIBRATION_STEP = 1.005
# The discrete Gaussian's mass beyond this many σ is below 1e-30 (Canonne et al. 2020).
_TAIL_SIGMAS = 11.6
_CHUNK = 1 << 20  # support points summed at once when computing a noise's spread


class NoiseKind(StrEnum):
    GAUSSIAN = "gaussian"
    LAPLACE = "laplace"


@dataclass(frozen=True)
class Bounds:
    """The range every contribution is clipped to; it alone fixes the sensitivity."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"bounds must be finite with low < high, got {self}")

    @property
    def sensitivity(self) -> float:
        """Largest change of a clipped sum when one patient is added or removed."""
        return max(abs(self.low), abs(self.high))

    @property
    def unit(self) -> float:
        """The grid step summed values are snapped to: the sensitivity is K such steps."""
        return self.sensitivity / LATTICE_UNITS

    def clip(self, values: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(values, dtype=float), self.low, self.high)

    def snap(self, values: np.ndarray) -> IntArray:
        """Clipped values as whole grid units: integers of at most K in absolute value.

        A deterministic function of each value, so one patient still moves a cell's integer
        sum by at most K, the integer sensitivity the noise is calibrated to.
        """
        units = np.rint(self.clip(values) / self.unit)
        return np.clip(units, -LATTICE_UNITS, LATTICE_UNITS).astype(np.int64)


@dataclass(frozen=True)
class NoiseCalibration:
    """One noise multiplier shared by ``releases`` vectors, and the event that pays for them.

    ``noise_multiplier`` is the parameter of the ledger's event, so the ledger charges
    precisely the noise that is added (see the module docstring for the scales it implies).
    """

    kind: NoiseKind
    noise_multiplier: float
    releases: int

    @property
    def event(self) -> PrivacyEvent:
        if self.kind is NoiseKind.GAUSSIAN:
            return DiscreteGaussianEvent(self.noise_multiplier, self.releases)
        return DiscreteLaplaceEvent(self.noise_multiplier, self.releases)

    @property
    def count_noise_sd(self) -> float:
        """Standard deviation of the noise on one released count (or positives, bin count)."""
        if self.kind is NoiseKind.GAUSSIAN:
            return _gaussian_noise_sds(self.noise_multiplier)[0]
        return _discrete_laplace_sd(self.noise_multiplier)

    def sum_noise_sd(self, bounds: Bounds) -> float:
        """Standard deviation of the noise on one released sum, in the values' units."""
        if self.kind is NoiseKind.GAUSSIAN:
            return bounds.unit * _gaussian_noise_sds(self.noise_multiplier)[1]
        return bounds.unit * _discrete_laplace_sd(self.noise_multiplier * LATTICE_UNITS)

    def noisy_counts(self, counts: IntArray) -> IntArray:
        """Counts (sensitivity 1) plus this family's discrete noise, as whole records."""
        if self.kind is NoiseKind.GAUSSIAN:
            lattice = discrete_gaussian(
                counts * LATTICE_UNITS, self.noise_multiplier * LATTICE_UNITS
            )
            return _round_half_away(lattice, LATTICE_UNITS)
        return discrete_laplace(counts, self.noise_multiplier)

    def noisy_sums(self, units: IntArray) -> IntArray:
        """Integer sums in grid units (sensitivity K) plus this family's discrete noise."""
        scale = self.noise_multiplier * LATTICE_UNITS
        if self.kind is NoiseKind.GAUSSIAN:
            return discrete_gaussian(units, scale)
        return discrete_laplace(units, scale)


def calibrate(
    kind: NoiseKind | str,
    epsilon: float,
    delta: float,
    releases: int,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> NoiseCalibration:
    """The least noise for which ``releases`` vectors together stay within (ε, δ).

    Laplace: each release at multiplier b is (1/b)-DP (sums too: see
    :class:`~privacy.events.DiscreteLaplaceEvent`), so b = ``releases`` / ε bounds the
    composition by basic composition whatever δ (the ledger's accountant may certify less).
    Gaussian: ``releases`` continuous Gaussian releases at multiplier σ are exactly
    ``releases`` DP-SGD steps at sampling rate 1, so the project's calibration gives the
    smallest such σ to 1 % of ε; the discrete event's ε is within about 0.01 % of it, and
    σ is then raised in 0.5 % steps until the accountant the ledger charges with certifies
    the discrete event itself. An accountant that cannot analyse the discrete event (prv)
    raises :class:`~privacy.accountants.UnsupportedEvent`.
    """
    kind = NoiseKind(kind)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    validate_delta(delta)
    if kind is NoiseKind.LAPLACE:
        return NoiseCalibration(kind, releases / epsilon, releases)
    return NoiseCalibration(
        kind, _gaussian_multiplier(epsilon, delta, releases, accountant), releases
    )


@lru_cache(maxsize=64)
def _gaussian_multiplier(epsilon: float, delta: float, releases: int, accountant: str) -> float:
    multiplier = noise_multiplier_for_epsilon(
        epsilon, 1.0, releases, delta, accountant, tolerance=epsilon / 100
    )
    certify = get_accountant(accountant)
    while certify.epsilon([DiscreteGaussianEvent(multiplier, releases)], delta) > epsilon:
        multiplier *= _DISCRETE_CALIBRATION_STEP
    return multiplier


def _discrete_laplace_sd(scale: float) -> float:
    """Standard deviation of P(z) ∝ exp(-|z| / scale): variance 2p / (1 - p)², p = e^(-1/b)."""
    p = math.exp(-1.0 / scale)
    return math.sqrt(2.0 * p) / (1.0 - p)


@lru_cache(maxsize=64)
def _gaussian_noise_sds(noise_multiplier: float) -> tuple[float, float]:
    """(sd on a count, sd in lattice units) of the Gaussian family at this multiplier.

    Y ~ N_Z(0, σ²) with σ = multiplier · K has no closed-form variance (it is just below σ²),
    and a count's noise is Y / K rounded half away from zero (about multiplier² + 1/12), so
    both are summed over the pmf's support; the noise is symmetric, so over y ≥ 0 only.
    """
    sigma = noise_multiplier * LATTICE_UNITS
    tail = math.ceil(_TAIL_SIGMAS * sigma)
    mass, lattice_moment, count_moment = 0.0, 0.0, 0.0
    for start in range(1, tail + 1, _CHUNK):
        y = np.arange(start, min(start + _CHUNK, tail + 1), dtype=np.float64)
        weight = np.exp(-0.5 * (y / sigma) ** 2)
        mass += float(weight.sum())
        lattice_moment += float((y**2 * weight).sum())
        count_moment += float((np.floor(y / LATTICE_UNITS + 0.5) ** 2 * weight).sum())
    normaliser = 1.0 + 2.0 * mass
    return (
        math.sqrt(2.0 * count_moment / normaliser),
        math.sqrt(2.0 * lattice_moment / normaliser),
    )


def _round_half_away(values: IntArray, divisor: int) -> IntArray:
    """``values`` / ``divisor`` rounded to integers, halves away from zero, in integers."""
    return np.sign(values) * ((np.abs(values) + divisor // 2) // divisor)


# --- clinic side: local noisy parts -----------------------------------------------------------


@dataclass(frozen=True)
class NoisyPart:
    """A noisy vector and the standard deviation of the noise on each of its components.

    Counts, positives and bin counts are integer arrays; sums are multiples of their grid
    unit (:attr:`Bounds.unit`).
    """

    values: np.ndarray
    noise_sd: float


@dataclass(frozen=True)
class LocalRelease:
    """What a clinic may send for one query: noisy parts only, and the event it must charge.

    ``parts["count"]`` has one noisy count per cell; other parts (``sum``, ``positives``,
    ``bins``) have the cells as first axis. ``withheld`` marks cells whose noisy count was
    below the clinic floor: their other parts were computed from no records at all.
    """

    parts: dict[str, NoisyPart]
    withheld: np.ndarray
    event: PrivacyEvent


def releases_for(statistic: str | None) -> int:
    """How many vectors a query releases: the counts, plus its own statistic if any."""
    return 1 if statistic is None else 2


def release_counts(
    cell_index: np.ndarray, n_cells: int, calibration: NoiseCalibration
) -> NoisyPart:
    """Noisy record counts per cell; ``cell_index`` = -1 drops a record (not in any cell)."""
    counts = _cell_totals(cell_index, np.ones(len(cell_index), dtype=np.int64), n_cells)
    return NoisyPart(calibration.noisy_counts(counts), calibration.count_noise_sd)


def release_local(
    cell_index: np.ndarray,
    n_cells: int,
    calibration: NoiseCalibration,
    *,
    statistic: str | None = None,
    values: np.ndarray | None = None,
    bounds: Bounds | None = None,
    edges: np.ndarray | None = None,
    min_records: int = CLINIC_MIN_RECORDS,
) -> LocalRelease:
    """A clinic's whole noisy reply for one query.

    ``statistic`` is None (counts only), ``"sum"`` (values clipped to ``bounds``),
    ``"positives"`` (0/1 ``values``) or ``"bins"`` (``values`` binned on ``edges``). The
    noise comes from the operating system's entropy through the exact samplers: there is no
    generator to pass, and so no seed anyone could choose or replay.

    The small-cell rule is decided on the *noisy* count, not the true one: a rule on the true
    count would change the output by 10 records (or 10 times the bound) when one patient moves
    a cell from 9 to 10, far beyond the sensitivity the noise is calibrated to, and the
    presence of a cell's statistic would itself reveal that the clinic has ≥ 10 such
    patients. Deciding on the already released noisy count is post-processing; the second
    part is then a release of a function (the statistic, or zero for a withheld cell) whose
    sensitivity is still the bound, so by adaptive composition the query costs exactly
    ``calibration.event`` whichever cells are withheld.
    """
    if calibration.releases != releases_for(statistic):
        raise ValueError(
            f"calibration is for {calibration.releases} release(s), the query makes "
            f"{releases_for(statistic)}"
        )
    cell_index = np.asarray(cell_index, dtype=int)
    counts = release_counts(cell_index, n_cells, calibration)
    withheld = counts.values < min_records
    parts = {"count": counts}
    if statistic is not None:
        if values is None:
            raise ValueError(f"statistic {statistic!r} needs values")
        kept = np.where(withheld[np.clip(cell_index, 0, None)], -1, cell_index)
        parts[statistic] = _statistic_part(
            statistic, kept, np.asarray(values, dtype=float), n_cells, calibration, bounds, edges
        )
    return LocalRelease(parts, withheld, calibration.event)


def _statistic_part(
    statistic: str,
    cell_index: np.ndarray,
    values: np.ndarray,
    n_cells: int,
    calibration: NoiseCalibration,
    bounds: Bounds | None,
    edges: np.ndarray | None,
) -> NoisyPart:
    if statistic == "sum":
        if bounds is None:
            raise ValueError("a sum needs the bounds its values are clipped to")
        totals = _cell_totals(cell_index, bounds.snap(values), n_cells)
        return NoisyPart(
            calibration.noisy_sums(totals) * bounds.unit, calibration.sum_noise_sd(bounds)
        )
    if statistic == "positives":
        if not np.isin(values, (0.0, 1.0)).all():
            raise ValueError("positives must be 0/1 values")
        totals = _cell_totals(cell_index, values.astype(np.int64), n_cells)
        return NoisyPart(calibration.noisy_counts(totals), calibration.count_noise_sd)
    if statistic == "bins":
        if edges is None:
            raise ValueError("a histogram needs bin edges")
        table = bin_counts(cell_index, values, edges, n_cells)
        return NoisyPart(calibration.noisy_counts(table), calibration.count_noise_sd)
    raise ValueError(f"unknown statistic {statistic!r}; expected sum, positives or bins")


def bin_counts(
    cell_index: np.ndarray, values: np.ndarray, edges: np.ndarray, n_cells: int
) -> IntArray:
    """True counts, a row per cell and a column per bin; outliers go to the outer bins."""
    edges = np.asarray(edges, dtype=float)
    n_bins = len(edges) - 1
    clipped = np.clip(values, edges[0], edges[-1])
    bins = np.clip(np.searchsorted(edges, clipped, side="right") - 1, 0, n_bins - 1)
    table = np.zeros((n_cells, n_bins), dtype=np.int64)
    keep = cell_index >= 0
    np.add.at(table, (cell_index[keep], bins[keep]), 1)
    return table


def _cell_totals(cell_index: np.ndarray, values: IntArray, n_cells: int) -> IntArray:
    """Exact integer totals per cell (float accumulation could round large sums)."""
    totals = np.zeros(n_cells, dtype=np.int64)
    keep = cell_index >= 0
    np.add.at(totals, cell_index[keep], values[keep])
    return totals


# --- coordinator side: combine and estimate ---------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A noisy answer, the standard error its noise implies, and a 95 % interval."""

    value: float
    standard_error: float
    low: float
    high: float

    @classmethod
    def normal(cls, value: float, standard_error: float) -> Estimate:
        half = Z_95 * standard_error
        return cls(value, standard_error, value - half, value + half)


def combine_sums(
    values: Sequence[float] | npt.NDArray[np.float64], noise_sds: Sequence[float]
) -> Estimate:
    """Sum of independent noisy parts: the variances add."""
    total = float(np.sum(values))
    return Estimate.normal(total, math.sqrt(float(np.sum(np.square(noise_sds)))))


def ratio(numerator: Estimate, denominator: Estimate) -> Estimate:
    """numerator / denominator with the delta-method standard error of independent noises.

    Var(S/N) ≈ (Var S + (S/N)² Var N) / N². Meaningful only for denominators well above
    their noise, which the suppression floor guarantees for any answer that is shown.
    """
    if denominator.value <= 0:
        return Estimate(math.nan, math.inf, -math.inf, math.inf)
    value = numerator.value / denominator.value
    variance = (
        numerator.standard_error**2 + value**2 * denominator.standard_error**2
    ) / denominator.value**2
    return Estimate.normal(value, math.sqrt(variance))


def histogram_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The q-quantile of a (noisy) histogram, read off its cumulative counts.

    The running sum of noisy counts is an unbiased estimate of the true cumulative counts
    (clipping each negative bin to 0 first would not be: it adds mass to the empty tails
    and drags quantiles towards them). It is then made non-decreasing and the crossing of
    q is interpolated linearly inside its bin.
    """
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    if total <= 0:
        return math.nan
    cumulative = np.clip(np.concatenate(([0.0], np.cumsum(counts))) / total, 0.0, 1.0)
    cumulative = np.maximum.accumulate(cumulative)
    return float(np.interp(q, cumulative, edges))


def quantile_estimate(
    counts: np.ndarray,
    noise_sd: float,
    edges: np.ndarray,
    q: float,
    rng: np.random.Generator,
    kind: NoiseKind = NoiseKind.GAUSSIAN,
) -> Estimate:
    """A quantile from a combined noisy histogram, with a parametric-bootstrap interval.

    The quantile is not a linear function of the counts, so its noise error has no closed
    form: the interval re-adds noise of the released scale to the released histogram many
    times and takes the spread of the resulting quantiles (this approximates the noise's
    effect around the truth; bin width adds a further, bounded discretisation error of at
    most one bin).
    """
    value = histogram_quantile(counts, edges, q)
    counts = np.asarray(counts, dtype=float)
    shape = (QUANTILE_BOOTSTRAP_DRAWS, *counts.shape)
    if kind is NoiseKind.GAUSSIAN:
        draws = counts + rng.normal(0.0, noise_sd, shape)
    else:
        draws = counts + rng.laplace(0.0, noise_sd / math.sqrt(2.0), shape)
    replicas = np.array([histogram_quantile(row, edges, q) for row in draws])
    replicas = replicas[np.isfinite(replicas)]
    if math.isnan(value) or len(replicas) == 0:
        return Estimate(math.nan, math.inf, -math.inf, math.inf)
    low, high = np.quantile(replicas, [0.025, 0.975])
    return Estimate(value, float(np.std(replicas)), float(low), float(high))
