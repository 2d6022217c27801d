"""The exact samplers: integers in, integers out, and draws that follow the stated pmf."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import chisquare

from oralfed.privacy.samplers import IntArray, discrete_gaussian, discrete_laplace

DRAWS = 4000
P_FLOOR = 1e-6  # a correct sampler fails the chi-square test once in a million runs


def laplace_pmf(z: np.ndarray, scale: float) -> np.ndarray:
    return math.tanh(1 / (2 * scale)) * np.exp(-np.abs(z) / scale)


def gaussian_pmf(z: np.ndarray, scale: float) -> np.ndarray:
    support = np.arange(-math.ceil(12 * scale) - 1, math.ceil(12 * scale) + 2)
    return np.exp(-0.5 * (z / scale) ** 2) / np.exp(-0.5 * (support / scale) ** 2).sum()


def chi_square_p(noise: np.ndarray, pmf: np.ndarray, support: np.ndarray) -> float:
    """p-value of the draws against the pmf, the outer tails pooled into two cells."""
    inner = np.array([(noise == z).sum() for z in support])
    tails = [(noise < support[0]).sum(), (noise > support[-1]).sum()]
    expected_inner = pmf * len(noise)
    tail_expected = (len(noise) - expected_inner.sum()) / 2
    observed = np.concatenate([inner, tails])
    expected = np.concatenate([expected_inner, [tail_expected, tail_expected]])
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("scale", [0.7, 2.0, 5.0])
def test_discrete_laplace_follows_its_pmf(scale: float) -> None:
    noise = discrete_laplace(np.full(DRAWS, 7), scale) - 7
    support = np.arange(-math.floor(3 * scale), math.floor(3 * scale) + 1)
    assert chi_square_p(noise, laplace_pmf(support, scale), support) > P_FLOOR


@pytest.mark.parametrize("scale", [0.7, 2.0, 5.0])
def test_discrete_gaussian_follows_its_pmf(scale: float) -> None:
    noise = discrete_gaussian(np.full(DRAWS, -3), scale) + 3
    support = np.arange(-math.floor(2 * scale), math.floor(2 * scale) + 1)
    assert chi_square_p(noise, gaussian_pmf(support, scale), support) > P_FLOOR


def test_a_sampler_with_the_wrong_scale_fails_the_test() -> None:
    """The check has power: draws of scale 2 are told apart from a pmf of scale 3."""
    noise = discrete_laplace(np.zeros(DRAWS, dtype=np.int64), 2.0)
    support = np.arange(-6, 7)
    assert chi_square_p(noise, laplace_pmf(support, 3.0), support) < P_FLOOR


SAMPLERS: list[Callable[[IntArray, float], IntArray]] = [discrete_laplace, discrete_gaussian]


@settings(max_examples=40, deadline=None)
@given(
    sampler=st.sampled_from(SAMPLERS),
    values=arrays(
        np.int64,
        st.tuples(st.integers(0, 4), st.integers(0, 4)),
        elements=st.integers(-(2**20), 2**20),
    ),
    scale=st.floats(0.1, 1e4),
)
def test_samplers_keep_integers_and_shape(
    sampler: Callable[[IntArray, float], IntArray], values: IntArray, scale: float
) -> None:
    noisy = sampler(values, scale)
    assert noisy.dtype == np.int64 and noisy.shape == values.shape


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_refuse_floats_and_bad_scales(
    sampler: Callable[[IntArray, float], IntArray],
) -> None:
    with pytest.raises(TypeError, match="integers"):
        sampler(np.array([1.5]), 1.0)  # type: ignore[arg-type]
    for scale in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="scale"):
            sampler(np.array([1]), scale)
