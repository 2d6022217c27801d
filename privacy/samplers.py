"""Exact noise samplers for integer-valued releases, from OpenDP.

A count released as ``count + rng.laplace(0, b)`` in float64 leaks through the floating-point
gaps between the outputs its neighbours can produce (Mironov 2012): some outputs are
possible for one count and impossible for the next. Integers with *discrete* noise drawn by
an exact sampler (Canonne, Kamath and Steinke 2020) have no such gaps: every integer is a
possible output of every input, with exactly the probability the analysis assumes. OpenDP
implements these samplers in integer and rational arithmetic and draws its bits from the
operating system's CSPRNG, so no seed exists to search.

OpenDP is imported on first use: it takes about a second, and light processes (the ledger
CLI, audit verification) never sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["discrete_gaussian", "discrete_laplace"]

IntArray = npt.NDArray[np.int64]


def discrete_laplace(values: Sequence[int] | IntArray, scale: float) -> IntArray:
    """``values`` + i.i.d. discrete Laplace noise, P(z) ∝ exp(-|z| / ``scale``).

    With L1 sensitivity Δ (an integer) this is (Δ / ``scale``)-DP, the privacy loss of
    ``DiscreteLaplaceEvent(scale, Δ)``.
    """
    return _apply(_mechanism("laplace", _checked_scale(scale)), values)


def discrete_gaussian(values: Sequence[int] | IntArray, scale: float) -> IntArray:
    """``values`` + i.i.d. discrete Gaussian noise, P(z) ∝ exp(-z² / (2 ``scale``²))."""
    return _apply(_mechanism("gaussian", _checked_scale(scale)), values)


def _checked_scale(scale: float) -> float:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"noise scale must be a positive finite number, got {scale!r}")
    return float(scale)


def _apply(
    mechanism: Callable[[list[int]], list[int]], values: Sequence[int] | IntArray
) -> IntArray:
    array = np.asarray(values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"exact samplers take integers, got {array.dtype}")
    flat = [int(value) for value in array.ravel()]
    noisy = mechanism(flat) if flat else []
    return np.asarray(noisy, dtype=np.int64).reshape(array.shape)


@lru_cache(maxsize=64)
def _mechanism(kind: str, scale: float) -> Any:
    import opendp.prelude as dp  # about a second to import: see the module docstring

    dp.enable_features("contrib")
    domain = dp.vector_domain(dp.atom_domain(T=int))
    if kind == "laplace":
        return dp.m.make_laplace(domain, dp.l1_distance(T=int), scale=scale)
    return dp.m.make_gaussian(domain, dp.l2_distance(T=int), scale=scale)
