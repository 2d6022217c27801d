"""DP statistics mechanisms: calibration matches the ledger, answers are unbiased, and the
stated error matches the error seen over repeated runs on data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.events import GaussianEvent, LaplaceEvent
from oralfed.privacy.mechanisms import (
    Bounds,
    Estimate,
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
    rng = np.random.default_rng(2024)
    for _ in range(RUNS):
        releases = []
        for cells, values, flags in CLINICS:
            releases.append(
                release_local(
                    cells,
                    N_CELLS,
                    calibration,
                    rng,
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


def test_gaussian_calibration_is_what_the_ledger_charges() -> None:
    calibration = calibrate("gaussian", 0.5, 1e-6, 2)
    assert calibration.event == GaussianEvent(calibration.noise_multiplier, 2)
    charged = get_accountant("pld").epsilon([calibration.event], 1e-6)
    assert 0.49 <= charged <= 0.5  # within budget, and not wastefully noisy


def test_laplace_calibration_composes_basically() -> None:
    calibration = calibrate("laplace", 0.5, 1e-6, 2)
    assert calibration.event == LaplaceEvent(4.0, 2)  # two (1/4)-DP releases: ε = 0.5
    assert calibration.noise_sd(3.0) == pytest.approx(math.sqrt(2) * 12.0)


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
    rng = np.random.default_rng(0)
    sums = []
    for _ in range(200):
        release = release_local(
            cells, 2, calibration, rng, statistic="sum", values=values, bounds=Bounds(0, 20)
        )
        if release.withheld[1]:
            sums.append(release.parts["sum"].values[1])
        assert not release.withheld[0]
    noise_sd = calibration.noise_sd(20.0)
    assert len(sums) > 150  # 3 records + noise of sd 6 stays under 10 most of the time
    assert abs(np.mean(sums)) < 4 * noise_sd / math.sqrt(len(sums))  # centred on 0, not 60


def test_release_refuses_a_mismatched_calibration() -> None:
    with pytest.raises(ValueError, match="release"):
        release_local(
            np.array([0]),
            1,
            calibrate("gaussian", 1.0, 1e-6, 1),
            np.random.default_rng(),
            statistic="sum",
            values=np.array([1.0]),
            bounds=Bounds(0, 1),
        )
