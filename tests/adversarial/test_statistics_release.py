"""The floating-point attack on noisy counts (Mironov 2012), against the old and new mechanism.

The old clinic code released ``count + rng.laplace(0, b)`` in float64. Numpy draws that
noise from a uniform double U = k / 2^53 and a logarithm, so the noise takes only finitely
many values, spaced ever more widely in the tails, and the float addition rounds again: an
output of count c is often a float that no draw could have produced from c + 1 (or c - 1).
Seeing it, an observer rules out the neighbouring count with certainty, whatever ε the
ledger recorded. The reference target is written out here; the attack decides exactly, for
each observed output, whether some k makes ``float(c') + noise(k)`` equal to it.

The new mechanism (``privacy.mechanisms.release_local``) releases integers plus discrete
noise from exact samplers: every integer is a possible output of every count, and for the
Laplace family the two counts' probabilities of any output differ by at most e^ε.
"""

from __future__ import annotations

import math

import numpy as np

from oralfed.privacy.events import LATTICE_UNITS
from oralfed.privacy.mechanisms import Bounds, NoiseKind, calibrate, release_local

COUNT = 3  # a small cell
EPSILON = 0.5
SCALE = 1 / EPSILON  # one count query's Laplace scale
RELEASES = 1000
_ULP_53 = 2.0**-53
_WINDOW = 64  # draws searched either side of the inverse; the bracket check proves it enough


# --- the old mechanism, the attack's target ---------------------------------------------------


def old_noise(k: int, scale: float) -> float:
    """numpy's ``Generator.laplace(0, scale)`` from its uniform double U = k / 2^53 (same
    branches, same libm ``log`` as numpy's C code)."""
    u = k * _ULP_53
    if u >= 0.5:
        return 0.0 - scale * math.log(2.0 - u - u)
    return 0.0 + scale * math.log(u + u)


def old_release(count: int, scale: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """The old ``NoiseCalibration.add_noise`` for counts: float count plus float Laplace."""
    return np.full(n, float(count)) + rng.laplace(0.0, scale, n)


def possible_under(output: float, count: int, scale: float) -> bool:
    """Whether some draw of the old mechanism turns ``count`` into exactly ``output``.

    ``float(count) + old_noise(k)`` is non-decreasing in k, so the draws that can produce
    ``output`` are a run of consecutive k around the inverse of the noise; a window that
    starts below ``output`` and ends above it contains the whole run.
    """
    target = output - count
    u = 1.0 - math.exp(-target / scale) / 2 if target >= 0 else math.exp(target / scale) / 2
    centre = round(u / _ULP_53)
    low, high = max(1, centre - _WINDOW), min(2**53 - 1, centre + _WINDOW)
    values = [float(count) + old_noise(k, scale) for k in range(low, high + 1)]
    assert values[0] < output < values[-1], "search window does not bracket the output"
    return output in values


def test_the_reference_is_numpys_laplace() -> None:
    raw = np.random.PCG64(7).random_raw(200)
    expected = np.random.Generator(np.random.PCG64(7)).laplace(0.0, SCALE, 200)
    assert [old_noise(int(r) >> 11, SCALE) for r in raw] == expected.tolist()


def test_float_laplace_lets_an_observer_rule_out_the_neighbouring_counts() -> None:
    outputs = old_release(COUNT, SCALE, np.random.default_rng(2012), RELEASES)
    assert all(possible_under(o, COUNT, SCALE) for o in outputs)  # the attack is exact
    ruled_out_above = np.array([not possible_under(o, COUNT + 1, SCALE) for o in outputs])
    ruled_out_below = np.array([not possible_under(o, COUNT - 1, SCALE) for o in outputs])
    # Often the observer knows the count is neither c - 1 nor c + 1.
    assert (ruled_out_above & ruled_out_below).mean() > 0.05
    assert ruled_out_above.mean() > 0.05


# --- the new mechanism ------------------------------------------------------------------------


def laplace_pmf(z: np.ndarray, scale: float) -> np.ndarray:
    return math.tanh(1 / (2 * scale)) * np.exp(-np.abs(z) / scale)


def small_cells(n: int) -> np.ndarray:
    """``RELEASES`` cells of ``COUNT`` records each: one query releases them all at once."""
    return np.repeat(np.arange(n), COUNT)


def test_discrete_laplace_counts_are_possible_under_both_neighbours() -> None:
    calibration = calibrate(NoiseKind.LAPLACE, EPSILON, 1e-6, 1)
    assert calibration.noise_multiplier == SCALE
    outputs = release_local(small_cells(RELEASES), RELEASES, calibration).parts["count"].values
    assert outputs.dtype == np.int64  # integers: no float gaps to read
    here = laplace_pmf(outputs - COUNT, SCALE)
    above = laplace_pmf(outputs - COUNT - 1, SCALE)
    below = laplace_pmf(outputs - COUNT + 1, SCALE)
    assert (here > 0).all() and (above > 0).all() and (below > 0).all()
    bound = EPSILON + 1e-12
    assert np.abs(np.log(here / above)).max() <= bound
    assert np.abs(np.log(here / below)).max() <= bound
    # And the noise is the discrete Laplace the ratio was computed for: P(noise = 0).
    assert abs(np.mean(outputs == COUNT) - laplace_pmf(np.array([0]), SCALE)[0]) < 0.06


def gaussian_count_pmf(noise_multiplier: float) -> dict[int, float]:
    """P(J = j) of the Gaussian family's count noise J = round(Y / K), Y ~ N_Z(0, (mK)²)."""
    sigma = noise_multiplier * LATTICE_UNITS
    y = np.arange(-math.ceil(12 * sigma), math.ceil(12 * sigma) + 1)
    weight = np.exp(-0.5 * (y / sigma) ** 2)
    j = np.sign(y) * ((np.abs(y) + LATTICE_UNITS // 2) // LATTICE_UNITS)
    masses = np.bincount(j - j.min(), weights=weight) / weight.sum()
    return {int(value): float(masses[value - j.min()]) for value in np.unique(j)}


def test_discrete_gaussian_counts_are_possible_under_both_neighbours() -> None:
    calibration = calibrate(NoiseKind.GAUSSIAN, EPSILON, 1e-6, 1)
    outputs = release_local(small_cells(RELEASES), RELEASES, calibration).parts["count"].values
    assert outputs.dtype == np.int64
    pmf = gaussian_count_pmf(calibration.noise_multiplier)
    for output in np.unique(outputs):
        for count in (COUNT - 1, COUNT, COUNT + 1):
            assert pmf.get(int(output) - count, 0.0) > 0


def test_every_sum_is_a_whole_number_of_grid_units() -> None:
    """Whatever the values, a released sum lies on the same grid: no gap tells inputs apart."""
    bounds = Bounds(0.0, 20.0)
    values = np.random.default_rng(1).uniform(0.0, 20.0, RELEASES * COUNT)
    for kind in NoiseKind:
        release = release_local(
            small_cells(RELEASES),
            RELEASES,
            calibrate(kind, EPSILON, 1e-6, 2),
            statistic="sum",
            values=values,
            bounds=bounds,
            min_records=0,
        )
        units = release.parts["sum"].values / bounds.unit
        assert np.array_equal(units, np.rint(units))
