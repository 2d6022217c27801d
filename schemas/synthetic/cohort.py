"""Patient-level features of one clinic, drawn from its profile (before outcomes and cells).

Features are sampled as numpy arrays of internal codes (see
:mod:`oralfed.schemas.synthetic.vocabulary`) with realistic correlations: a latent
"oral-health engagement" ties brushing, flossing, sugar and attendance together, age drives
smoking, BMI and diabetes. Keeping them as arrays lets the outcome models, the calibration
and the row writer share one draw. The order of draws is part of the determinism contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from oralfed.schemas.synthetic.ground_truth import caries_logit, periodontitis_eta, sigmoid
from oralfed.schemas.synthetic.profiles import AGE_BAND_WEIGHTS, COHORT_AGE_BANDS, ClinicProfile

__all__ = ["Cohort", "interp_by_age", "sample_cohort"]

_WATER_EMPTY_SHARE_OF_UNKNOWN: Final[float] = 0.4  # unknown written as an empty cell


@dataclass(frozen=True)
class Cohort:
    """A clinic's features as numpy arrays (codes), before outcomes and formatting."""

    age: np.ndarray
    sex: np.ndarray
    smoking: np.ndarray
    brushing: np.ndarray
    flossing: np.ndarray
    drinks: np.ndarray
    snacks: np.ndarray
    toothpaste: np.ndarray
    water: np.ndarray  # 0 yes, 1 no, 2 unknown
    water_empty: np.ndarray  # unknown written as an empty cell
    visits: np.ndarray
    diabetes: np.ndarray
    bmi: np.ndarray  # true BMI (always present; missingness applied when writing)
    consent: np.ndarray

    def caries_logit(self) -> np.ndarray:
        """Each patient's untreated-caries log-odds under the ground truth."""
        return caries_logit(
            self.age,
            self.smoking,
            self.brushing,
            self.flossing,
            self.drinks,
            self.snacks,
            self.toothpaste,
            self.water,
            self.visits,
            self.diabetes,
        )

    def periodontitis_eta(self) -> np.ndarray:
        """Each patient's periodontitis risk score (before the stage thresholds)."""
        return periodontitis_eta(
            self.age, self.smoking, self.diabetes, self.sex == 1, self.flossing, self.visits
        )


def interp_by_age(age: np.ndarray, points: tuple[tuple[float, float], ...]) -> np.ndarray:
    """A piecewise-linear curve over age, given as (age, value) knots (flat beyond them)."""
    xs, ys = zip(*points, strict=True)
    return np.interp(age, xs, ys)


def sample_cohort(profile: ClinicProfile, rng: np.random.Generator) -> Cohort:
    """Draw the patients' features. The order of draws is part of the determinism contract."""
    n = profile.n_patients
    p = profile
    weights = np.asarray(AGE_BAND_WEIGHTS[p.age_mix])
    band = rng.choice(len(COHORT_AGE_BANDS), size=n, p=weights / weights.sum())
    low = np.asarray([b[0] for b in COHORT_AGE_BANDS])[band]
    high = np.asarray([b[1] for b in COHORT_AGE_BANDS])[band]
    age = rng.integers(low, high + 1).astype(np.float64)

    other, unknown = 0.006, 0.012
    sex = rng.choice(
        4, size=n, p=[p.female_share, 1.0 - p.female_share - other - unknown, other, unknown]
    )
    female = sex == 0

    # Smoking: none under 13, rising through the teens, lower after 65 (quitting, survival).
    p_current = np.select(
        [age < 13, age < 20, age < 65],
        [0.0, p.current_smoking_rate * 0.35 * (age - 12) / 7.0, p.current_smoking_rate],
        p.current_smoking_rate * 0.55,
    )
    p_former = np.where(
        age < 15,
        0.0,
        np.where(age < 20, 0.02, p.former_smoking_rate * np.clip(0.4 + (age - 20) / 50, 0.4, 1.6)),
    )
    u = rng.random(n)
    smoking = np.where(u < p_current, 2, np.where(u < p_current + p_former, 1, 0))

    # A latent "oral-health engagement" ties habits together the way they co-occur in
    # real surveys (smokers brush, floss and attend less and drink more sugar).
    z = rng.normal(0.0, 1.0, n) + p.hygiene_shift - 0.35 * (smoking == 2) - 0.1 * (smoking == 1)

    brushing_raw = 1.7 + 0.55 * z + 0.15 * female - 0.2 * (age <= 5) + rng.normal(0.0, 0.45, n)
    half_steps = rng.random(n) < 0.08  # a few records say "1.5 a day"
    brushing = np.where(half_steps, np.round(brushing_raw * 2) / 2, np.round(brushing_raw))
    brushing = np.clip(brushing, 0.0, 5.0)

    p_floss = sigmoid(-1.1 + 1.0 * z + 0.3 * female - 0.8 * (age <= 5))
    flossing = rng.binomial(7, p_floss).astype(np.float64)

    drink_age = interp_by_age(
        age, ((2, 0.5), (8, 0.9), (16, 1.6), (25, 1.3), (45, 0.8), (70, 0.45), (104, 0.4))
    )
    snack_age = interp_by_age(
        age, ((2, 1.6), (10, 2.0), (18, 1.6), (30, 1.2), (60, 1.0), (104, 0.9))
    )
    lifestyle = np.exp(-0.25 * z + 0.15 * (smoking == 2))
    drinks = _gamma_half_steps(rng, drink_age * p.sugar_multiplier * lifestyle, shape=0.9)
    snacks = _gamma_half_steps(rng, snack_age * p.sugar_multiplier * lifestyle, shape=1.3)

    toothpaste_logit = np.log(p.fluoride_toothpaste_rate / (1 - p.fluoride_toothpaste_rate))
    toothpaste = rng.random(n) < sigmoid(toothpaste_logit + 0.4 * z)

    u = rng.random(n)
    water_unknown = u < p.water_unknown_rate
    water_yes = rng.random(n) < p.fluoridated_water_rate
    water = np.where(water_unknown, 2, np.where(water_yes, 0, 1))
    water_empty = water_unknown & (rng.random(n) < _WATER_EMPTY_SHARE_OF_UNKNOWN)

    visit_mean = p.visit_rate * np.exp(0.35 * z + 0.1 * female) * np.where(age <= 5, 0.7, 1.0)
    visits = np.minimum(rng.poisson(visit_mean), 12).astype(np.float64)

    bmi_median = interp_by_age(
        age,
        (
            (2, 16.0),
            (6, 15.8),
            (12, 19.0),
            (19, 23.0),
            (35, 27.5),
            (60, 29.0),
            (80, 27.0),
            (104, 25.0),
        ),
    )
    bmi_spread = np.where(age < 20, 0.14, 0.19)
    bmi = bmi_median * np.exp(rng.normal(0.0, bmi_spread) + 0.02 * np.minimum(drinks, 5))
    bmi = np.clip(np.round(bmi, 1), 12.0, 70.0)

    # Diagnosed diabetes: ~0.3% of children, rising with age to ~27% at 70 and flat after
    # (survival), and with BMI.
    diabetes_logit = np.where(
        age < 20, -5.8, -4.85 + 0.055 * np.minimum(age, 70.0) + 0.08 * (bmi - 28.0)
    ) + np.log(p.diabetes_odds_ratio)
    diabetes = rng.random(n) < sigmoid(diabetes_logit)

    consent = rng.choice(
        3, size=n, p=[p.consent_care_only, p.consent_statistics, p.consent_research]
    )
    return Cohort(
        age=age,
        sex=sex,
        smoking=smoking,
        brushing=brushing,
        flossing=flossing,
        drinks=drinks,
        snacks=snacks,
        toothpaste=toothpaste,
        water=water,
        water_empty=water_empty,
        visits=visits,
        diabetes=diabetes,
        bmi=bmi,
        consent=consent,
    )


def _gamma_half_steps(rng: np.random.Generator, mean: np.ndarray, shape: float) -> np.ndarray:
    """Right-skewed daily counts (many zeros, a few heavy users), in steps of 0.5, 0..20."""
    draws = rng.gamma(shape, mean / shape)
    return np.clip(np.round(draws * 2) / 2, 0.0, 20.0)
