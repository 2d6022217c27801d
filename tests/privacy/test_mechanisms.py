"""DP statistics mechanisms: calibration matches the ledger, releases are integers with
discrete noise, answers are unbiased, and the stated error matches the error seen over
repeated runs on data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.events import LATTICE_UNITS, DiscreteGaussianEvent, DiscreteLaplaceEvent
from oralfed.privacy.mechanisms import (
    Bounds,
    Estimate,
    NoiseCalibration,
    NoiseKind,
    bin_counts,
    calibrate,
    combine_sums,
    histogram_quantile,
    quantile_estimate,
    ratio,
    release_local,
)

RUNS = 300
N_CELLS = 2
EDGES = np.linspace(0.0, 20.0, 11)


def clinic_data(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One clinic: cell of each record, a numeric value in [0, 20] and a 0/1 flag."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, N_CELLS, n)
    values = np.clip(rng.gamma(2.0, 2.0, n), 0, 20)
    flags = (rng.random(n) < 0.3).astype(float)
    return cells, values, flags


CLINICS = [clinic_data(seed) for seed in (1, 2, 3)]


def repeated(statistic: str | None, kind: NoiseKind, epsilon: float = 0.5):
    """RUNS combined answers of 3 clinics; yields per run (counts, statistic) estimates."""
    calibration = calibrate(kind, epsilon, 1e-6, 2 if statistic else 1)
    for _ in range(RUNS):
        releases = []
        for cells, values, flags in CLINICS:
            releases.append(
                release_local(
                    cells,
                    N_CELLS,
                    calibration,
                    statistic=statistic,
                    values=flags if statistic == "positives" else values,
                    bounds=Bounds(0.0, 20.0),
                    edges=EDGES,
                )
            )
        yield releases


def check_errors(estimates: list[Estimate], truth: float) -> None:
    """Unbiased, the stated SE matches the spread, and the 95 % interval covers ~95 %."""
    errors = np.array([e.value - truth for e in estimates])
    stated = np.mean([e.standard_error for e in estimates])
    assert abs(errors.mean()) < 4 * stated / math.sqrt(len(errors))
    assert 0.8 < errors.std() / stated < 1.2
    coverage = np.mean([e.low <= truth <= e.high for e in estimates])
    assert 0.9 <= coverage <= 0.99


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_gaussian_calibration_is_what_the_ledger_charges(accountant: str) -> None:
    calibration = calibrate("gaussian", 0.5, 1e-6, 2, accountant)
    assert calibration.event == DiscreteGaussianEvent(calibration.noise_multiplier, 2)
    charged = get_accountant(accountant).epsilon([calibration.event], 1e-6)
    assert 0.49 <= charged <= 0.5  # within budget, and not wastefully noisy


def test_laplace_calibration_composes_basically() -> None:
    calibration = calibrate("laplace", 0.5, 1e-6, 2)
    assert calibration.event == DiscreteLaplaceEvent(4.0, 2)  # two (1/4)-DP releases: ε = 0.5
    p = math.exp(-1 / 4.0)  # discrete Laplace of scale 4: variance 2p / (1 - p)²
    assert calibration.count_noise_sd == pytest.approx(math.sqrt(2 * p) / (1 - p))
    # A sum's scale is 4 x 1024 grid units of 3 / 1024: essentially the continuous sd.
    assert calibration.sum_noise_sd(Bounds(0.0, 3.0)) == pytest.approx(math.sqrt(2) * 12.0)


@pytest.mark.parametrize("multiplier", [0.5, 1.0, 4.0])
def test_gaussian_noise_sds_match_the_discrete_noise(multiplier: float) -> None:
    """A count's noise is the lattice noise rounded to whole records: for m ≥ 1 its variance
    is about m² + 1/12 (Sheppard; ties, 1/1024 of the mass, add a little), below that the
    rounding's periodic correction shows."""
    calibration = NoiseCalibration(NoiseKind.GAUSSIAN, multiplier, 1)
    if multiplier >= 1:
        expected = math.sqrt(multiplier**2 + 1 / 12)
        assert calibration.count_noise_sd == pytest.approx(expected, 1e-3)
    assert calibration.sum_noise_sd(Bounds(0.0, 2.0)) == pytest.approx(2.0 * multiplier, 1e-9)
    draws = calibration.noisy_counts(np.zeros(4000, dtype=np.int64))
    assert draws.dtype == np.int64
    assert 0.9 < draws.std() / calibration.count_noise_sd < 1.1
    assert abs(draws.mean()) < 4 * calibration.count_noise_sd / math.sqrt(len(draws))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_calibration_refuses_non_positive_epsilon(bad: float) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        calibrate("gaussian", bad, 1e-6, 1)


def test_bounds_clip_and_fix_the_sensitivity() -> None:
    bounds = Bounds(0.0, 6.0)
    assert bounds.sensitivity == 6.0
    assert bounds.clip(np.array([-1.0, 3.0, 99.0])).tolist() == [0.0, 3.0, 6.0]
    with pytest.raises(ValueError):
        Bounds(5.0, 5.0)


@pytest.mark.parametrize("kind", [NoiseKind.GAUSSIAN, NoiseKind.LAPLACE])
def test_count_is_unbiased_and_its_error_is_as_stated(kind: NoiseKind) -> None:
    truth = sum(float((cells == 0).sum()) for cells, _, _ in CLINICS)
    estimates = [
        combine_sums(
            [r.parts["count"].values[0] for r in releases],
            [r.parts["count"].noise_sd for r in releases],
        )
        for releases in repeated(None, kind)
    ]
    check_errors(estimates, truth)


@pytest.mark.parametrize("kind", [NoiseKind.GAUSSIAN, NoiseKind.LAPLACE])
def test_sum_and_mean_are_unbiased_with_stated_error(kind: NoiseKind) -> None:
    true_sum = sum(values[cells == 1].sum() for cells, values, _ in CLINICS)
    true_count = sum(float((cells == 1).sum()) for cells, _, _ in CLINICS)
    sums, means = [], []
    for releases in repeated("sum", kind):
        total = combine_sums(
            [r.parts["sum"].values[1] for r in releases],
            [r.parts["sum"].noise_sd for r in releases],
        )
        count = combine_sums(
            [r.parts["count"].values[1] for r in releases],
            [r.parts["count"].noise_sd for r in releases],
        )
        sums.append(total)
        means.append(ratio(total, count))
    check_errors(sums, true_sum)
    check_errors(means, true_sum / true_count)


def test_proportion_is_unbiased_with_stated_error() -> None:
    positives = sum(flags[cells == 0].sum() for cells, _, flags in CLINICS)
    count = sum(float((cells == 0).sum()) for cells, _, _ in CLINICS)
    estimates = []
    for releases in repeated("positives", NoiseKind.GAUSSIAN):
        estimates.append(
            ratio(
                combine_sums(
                    [r.parts["positives"].values[0] for r in releases],
                    [r.parts["positives"].noise_sd for r in releases],
                ),
                combine_sums(
                    [r.parts["count"].values[0] for r in releases],
                    [r.parts["count"].noise_sd for r in releases],
                ),
            )
        )
    check_errors(estimates, positives / count)


def test_histogram_bins_are_unbiased_with_stated_error() -> None:
    truth = sum(bin_counts(cells, values, EDGES, N_CELLS) for cells, values, _ in CLINICS)
    estimates = [
        combine_sums(
            [r.parts["bins"].values[0, 2] for r in releases],
            [r.parts["bins"].noise_sd for r in releases],
        )
        for releases in repeated("bins", NoiseKind.GAUSSIAN)
    ]
    check_errors(estimates, truth[0, 2])


def test_quantile_interval_covers_the_histogram_median() -> None:
    """The bootstrap interval is about the noise: it should cover the noise-free median."""
    truth_table = sum(bin_counts(cells, values, EDGES, N_CELLS) for cells, values, _ in CLINICS)
    truth = histogram_quantile(truth_table[0], EDGES, 0.5)
    rng = np.random.default_rng(5)
    estimates = []
    for releases in list(repeated("bins", NoiseKind.GAUSSIAN, epsilon=1.0))[:100]:
        summed = sum(r.parts["bins"].values[0] for r in releases)
        sd = math.sqrt(sum(r.parts["bins"].noise_sd ** 2 for r in releases))
        estimates.append(quantile_estimate(summed, sd, EDGES, 0.5, rng))
    errors = np.array([e.value - truth for e in estimates])
    assert abs(errors.mean()) < 0.25  # bins are 2 wide: essentially unbiased
    coverage = np.mean([e.low <= truth <= e.high for e in estimates])
    assert coverage >= 0.85


def test_a_small_cell_releases_noise_only() -> None:
    """A cell with 3 records at a clinic: its statistic carries none of their values."""
    cells = np.array([0] * 200 + [1] * 3)
    values = np.full(len(cells), 20.0)
    calibration = calibrate("gaussian", 1.0, 1e-6, 2)
    sums = []
    for _ in range(200):
        release = release_local(
            cells, 2, calibration, statistic="sum", values=values, bounds=Bounds(0, 20)
        )
        if release.withheld[1]:
            sums.append(release.parts["sum"].values[1])
        assert not release.withheld[0]
    noise_sd = calibration.sum_noise_sd(Bounds(0, 20))
    assert len(sums) > 150  # 3 records + noise of sd 6 stays under 10 most of the time
    assert abs(np.mean(sums)) < 4 * noise_sd / math.sqrt(len(sums))  # centred on 0, not 60


def test_release_refuses_a_mismatched_calibration() -> None:
    with pytest.raises(ValueError, match="release"):
        release_local(
            np.array([0]),
            1,
            calibrate("gaussian", 1.0, 1e-6, 1),
            statistic="sum",
            values=np.array([1.0]),
            bounds=Bounds(0, 1),
        )


# --- discrete releases ------------------------------------------------------------------------


def test_sums_snap_to_a_grid_of_the_bound_with_at_most_half_a_step_of_bias() -> None:
    bounds = Bounds(2.0, 110.0)  # age_years
    assert bounds.unit == 110.0 / LATTICE_UNITS
    ages = np.linspace(-5.0, 120.0, 10_001)
    units = bounds.snap(ages)
    assert units.dtype == np.int64 and np.abs(units).max() == LATTICE_UNITS
    assert np.abs(units * bounds.unit - bounds.clip(ages)).max() <= bounds.unit / 2 + 1e-12
    dmft = np.arange(0.0, 33.0)  # whole counts already sit on the 32/1024 grid
    assert (Bounds(0.0, 32.0).snap(dmft) * Bounds(0.0, 32.0).unit == dmft).all()


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(list(NoiseKind)),
    statistic=st.sampled_from([None, "sum", "positives", "bins"]),
    data=st.lists(
        st.tuples(st.integers(-1, 2), st.floats(-50.0, 150.0), st.booleans()),
        max_size=60,
    ),
)
def test_every_release_is_integer_valued(
    kind: NoiseKind, statistic: str | None, data: list[tuple[int, float, bool]]
) -> None:
    """Counts, positives and bins are integers; a sum is an integer number of grid units."""
    cells = np.array([cell for cell, _, _ in data], dtype=int)
    values = np.array([flag if statistic == "positives" else v for _, v, flag in data], float)
    bounds = Bounds(-10.0, 100.0)
    release = release_local(
        cells,
        3,
        calibrate(kind, 1.0, 1e-6, 2 if statistic else 1),  # cached after the first call
        statistic=statistic,
        values=values,
        bounds=bounds,
        edges=np.linspace(0.0, 100.0, 6),
    )
    for name, part in release.parts.items():
        if name == "sum":
            units = part.values / bounds.unit
            assert np.allclose(units, np.rint(units), rtol=0, atol=1e-6)
        else:
            assert part.values.dtype == np.int64
    assert release.parts["count"].values.shape == (3,)
