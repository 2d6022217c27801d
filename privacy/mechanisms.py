"""Differentially private statistics: the noise a clinic adds and the error it implies.

Every query is answered from per-cell *sufficient statistics* (counts, clipped sums,
positives, bin counts). Each patient contributes to exactly one cell and, within it, to at
most one bin, so for add/remove-one-patient neighbours a count vector (or a bin-count
array) has L1 = L2 sensitivity 1 however many cells there are, and a vector of sums clipped
to ``[low, high]`` has L1 = L2 sensitivity ``max(|low|, |high|)``. Sensitivities come from
the :class:`Bounds` the caller derives from the data contract, never from the data.

A query releases one or two such vectors (always the counts, which the coordinator needs
for small-cell suppression, plus the measure's own statistic). Every vector is released
with the *same* noise multiplier relative to its own sensitivity, so the whole query is one
:class:`~privacy.events.GaussianEvent` (or :class:`~privacy.events.LaplaceEvent`) with
``count`` = number of vectors: the ε budget is split equally between the parts, and the
ledger composes them exactly as the accountant would any other repeated release.

This module is pure numpy (no torch, no Flower) and knows nothing of records: the clinic
maps its records to cell indices and values, the coordinator combines the clinics' parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import numpy as np

from oralfed.privacy.accountants import DEFAULT_ACCOUNTANT, validate_delta
from oralfed.privacy.calibration import noise_multiplier_for_epsilon
from oralfed.privacy.events import GaussianEvent, LaplaceEvent, PrivacyEvent

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile
# A clinic's parts for a cell are released from its records only when its *noisy* count is at
# least this (issue 5: "a group with fewer than 10 records at a clinic contributes nothing").
CLINIC_MIN_RECORDS = 10
QUANTILE_BOOTSTRAP_DRAWS = 400


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

    def clip(self, values: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(values, dtype=float), self.low, self.high)


@dataclass(frozen=True)
class NoiseCalibration:
    """One noise multiplier shared by ``releases`` vectors, and the event that pays for them.

    ``noise_multiplier`` is σ / sensitivity (Gaussian) or b / L1 sensitivity (Laplace),
    exactly the parameter of the ledger's event, so the ledger charges precisely the noise
    that was added.
    """

    kind: NoiseKind
    noise_multiplier: float
    releases: int

    @property
    def event(self) -> PrivacyEvent:
        if self.kind is NoiseKind.GAUSSIAN:
            return GaussianEvent(self.noise_multiplier, self.releases)
        return LaplaceEvent(self.noise_multiplier, self.releases)

    def noise_sd(self, sensitivity: float) -> float:
        """Standard deviation of the noise on one component with this sensitivity."""
        scale = self.noise_multiplier * sensitivity
        return scale if self.kind is NoiseKind.GAUSSIAN else math.sqrt(2.0) * scale

    def add_noise(
        self, values: np.ndarray, sensitivity: float, rng: np.random.Generator
    ) -> np.ndarray:
        scale = self.noise_multiplier * sensitivity
        shape = np.shape(values)
        if self.kind is NoiseKind.GAUSSIAN:
            noise = rng.normal(0.0, scale, shape)
        else:
            noise = rng.laplace(0.0, scale, shape)
        return np.asarray(values, dtype=float) + noise


def calibrate(
    kind: NoiseKind | str,
    epsilon: float,
    delta: float,
    releases: int,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> NoiseCalibration:
    """The least noise for which ``releases`` vectors together stay within (ε, δ).

    Gaussian: ``releases`` Gaussian releases at multiplier σ are exactly ``releases``
    DP-SGD steps at sampling rate 1, so the project's calibration (the same accountant the
    ledger charges with) gives the smallest σ whose composed ε ≤ ε, to 1 % of ε. Laplace:
    each release at multiplier b is (1/b)-DP, so b = releases / ε bounds the composition
    by basic composition whatever δ (the ledger's accountant may certify less).
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
    return noise_multiplier_for_epsilon(
        epsilon, 1.0, releases, delta, accountant, tolerance=epsilon / 100
    )


# --- clinic side: local noisy parts -----------------------------------------------------------


@dataclass(frozen=True)
class NoisyPart:
    """A noisy vector and the standard deviation of the noise on each of its components."""

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
    cell_index: np.ndarray, n_cells: int, calibration: NoiseCalibration, rng: np.random.Generator
) -> NoisyPart:
    """Noisy record counts per cell; ``cell_index`` = -1 drops a record (not in any cell)."""
    counts = _cell_totals(cell_index, np.ones(len(cell_index)), n_cells)
    return NoisyPart(calibration.add_noise(counts, 1.0, rng), calibration.noise_sd(1.0))


def release_local(
    cell_index: np.ndarray,
    n_cells: int,
    calibration: NoiseCalibration,
    rng: np.random.Generator,
    *,
    statistic: str | None = None,
    values: np.ndarray | None = None,
    bounds: Bounds | None = None,
    edges: np.ndarray | None = None,
    min_records: int = CLINIC_MIN_RECORDS,
) -> LocalRelease:
    """A clinic's whole noisy reply for one query.

    ``statistic`` is None (counts only), ``"sum"`` (values clipped to ``bounds``),
    ``"positives"`` (0/1 ``values``) or ``"bins"`` (``values`` binned on ``edges``).

    The small-cell rule is decided on the *noisy* count, not the true one: a rule on the true
    count would change the output by 10 records (or 10 times the bound) when one patient moves
    a cell from 9 to 10, far beyond the sensitivity the noise is calibrated to, and the
    presence of a cell's statistic would itself reveal that the clinic has ≥ 10 such
    patients. Deciding on the already released noisy count is post-processing; the second
    part is then a Gaussian/Laplace release of a function (the statistic, or zero for a
    withheld cell) whose sensitivity is still the bound, so by adaptive composition the
    query costs exactly ``calibration.event`` whichever cells are withheld.
    """
    if calibration.releases != releases_for(statistic):
        raise ValueError(
            f"calibration is for {calibration.releases} release(s), the query makes "
            f"{releases_for(statistic)}"
        )
    cell_index = np.asarray(cell_index, dtype=int)
    counts = release_counts(cell_index, n_cells, calibration, rng)
    withheld = counts.values < min_records
    parts = {"count": counts}
    if statistic is not None:
        if values is None:
            raise ValueError(f"statistic {statistic!r} needs values")
        kept = np.where(withheld[np.clip(cell_index, 0, None)], -1, cell_index)
        parts[statistic] = _statistic_part(
            statistic,
            kept,
            np.asarray(values, dtype=float),
            n_cells,
            calibration,
            rng,
            bounds,
            edges,
        )
    return LocalRelease(parts, withheld, calibration.event)


def _statistic_part(
    statistic: str,
    cell_index: np.ndarray,
    values: np.ndarray,
    n_cells: int,
    calibration: NoiseCalibration,
    rng: np.random.Generator,
    bounds: Bounds | None,
    edges: np.ndarray | None,
) -> NoisyPart:
    if statistic == "sum":
        if bounds is None:
            raise ValueError("a sum needs the bounds its values are clipped to")
        totals = _cell_totals(cell_index, bounds.clip(values), n_cells)
        return NoisyPart(
            calibration.add_noise(totals, bounds.sensitivity, rng),
            calibration.noise_sd(bounds.sensitivity),
        )
    if statistic == "positives":
        if not np.isin(values, (0.0, 1.0)).all():
            raise ValueError("positives must be 0/1 values")
        totals = _cell_totals(cell_index, values, n_cells)
        return NoisyPart(calibration.add_noise(totals, 1.0, rng), calibration.noise_sd(1.0))
    if statistic == "bins":
        if edges is None:
            raise ValueError("a histogram needs bin edges")
        table = bin_counts(cell_index, values, edges, n_cells)
        return NoisyPart(calibration.add_noise(table, 1.0, rng), calibration.noise_sd(1.0))
    raise ValueError(f"unknown statistic {statistic!r}; expected sum, positives or bins")


def bin_counts(
    cell_index: np.ndarray, values: np.ndarray, edges: np.ndarray, n_cells: int
) -> np.ndarray:
    """True counts, a row per cell and a column per bin; outliers go to the outer bins."""
    edges = np.asarray(edges, dtype=float)
    n_bins = len(edges) - 1
    clipped = np.clip(values, edges[0], edges[-1])
    bins = np.clip(np.searchsorted(edges, clipped, side="right") - 1, 0, n_bins - 1)
    table = np.zeros((n_cells, n_bins))
    keep = cell_index >= 0
    np.add.at(table, (cell_index[keep], bins[keep]), 1.0)
    return table


def _cell_totals(cell_index: np.ndarray, values: np.ndarray, n_cells: int) -> np.ndarray:
    keep = cell_index >= 0
    return np.bincount(cell_index[keep], weights=values[keep], minlength=n_cells).astype(float)


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


def combine_sums(values: Sequence[float], noise_sds: Sequence[float]) -> Estimate:
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
