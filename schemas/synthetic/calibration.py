"""Re-derivation of the calibrated ground-truth constants (run offline, results frozen).

The caries intercepts and periodontitis thresholds are chosen so that the default pooled
population reproduces the contract's reference prevalences. They depend on every feature
distribution, so after changing one the constants must be re-fitted; this module does that
on expected probabilities (no outcome noise), from exactly the features the generator draws.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from oralfed.schemas.synthetic.cohort import sample_cohort
from oralfed.schemas.synthetic.ground_truth import (
    CARIES_COEFFICIENTS,
    PERIO_EXAM_AGE,
    caries_age_offset,
    sigmoid,
)
from oralfed.schemas.synthetic.profiles import clinic_profiles
from oralfed.schemas.synthetic.streams import clinic_streams

__all__ = ["derive_calibration"]


def _solve_shift(base: np.ndarray, target: float) -> float:
    """The constant ``s`` with mean(sigmoid(base + s)) == target (bisection)."""
    low, high = -20.0, 20.0
    for _ in range(100):
        mid = (low + high) / 2
        if sigmoid(base + mid).mean() < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def derive_calibration(seeds: Iterable[int] = range(400), n_clinics: int = 10) -> dict[str, float]:
    """Re-derive the calibrated constants on the default pooled population.

    Uses expected probabilities over the sampled features (no outcome noise). Run it after
    changing any feature distribution or coefficient and paste the result into
    ``CARIES_COEFFICIENTS`` / ``PERIODONTITIS_THRESHOLDS`` in
    :mod:`oralfed.schemas.synthetic.ground_truth` (``docs/data.md`` says how).
    """
    ages, habits, etas = [], [], []
    for seed in seeds:
        for profile in clinic_profiles(n_clinics, seed):
            stream = clinic_streams(profile.clinic_id, seed).features
            cohort = sample_cohort(profile, np.random.default_rng(stream))
            ages.append(cohort.age)
            habits.append(cohort.caries_logit() - caries_age_offset(cohort.age))
            etas.append(cohort.periodontitis_eta())
    age, habit, eta = np.concatenate(ages), np.concatenate(habits), np.concatenate(etas)
    c = CARIES_COEFFICIENTS
    intercept = _solve_shift(habit[(age >= 20) & (age <= 64)], 0.26)
    youth_shift = _solve_shift(habit[(age >= 6) & (age <= 19)], 0.133) - intercept
    eta = eta[age >= PERIO_EXAM_AGE]
    return {
        "intercept_age_20_64": intercept,
        "age_6_19": youth_shift,
        "age_2_5": youth_shift + (c["age_2_5"] - c["age_6_19"]),
        "perio_mild": -_solve_shift(eta, 0.42),
        "perio_moderate": -_solve_shift(eta, 0.34),
        "perio_severe": -_solve_shift(eta, 0.078),
    }
