"""The documented ground-truth outcome models, on contract words and on internal codes.

Outcomes are sampled from these models, and the same models are public so that tests and
benchmarks can compare a learned model with the truth (a Bayes AUC, calibration bins).
Every number is documented, with its rationale, in ``docs/data.md``. The intercepts and
thresholds marked "calibrated" were fitted once with ``derive_calibration()`` (see
:mod:`oralfed.schemas.synthetic.calibration`) on the default pooled population
(``clinic_profiles(10, s)`` for ``s in range(400)``), then frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from oralfed.schemas.synthetic.checks import SyntheticDataError
from oralfed.schemas.synthetic.vocabulary import SEXES, SMOKING_STATUSES, WATER_STATUSES

__all__ = [
    "CARIES_COEFFICIENTS",
    "PERIODONTITIS_COEFFICIENTS",
    "PERIODONTITIS_THRESHOLDS",
    "PERIO_EXAM_AGE",
    "caries_age_offset",
    "caries_logit",
    "periodontitis_eta",
    "periodontitis_stage_probabilities",
    "sigmoid",
    "stage_probabilities",
    "untreated_caries_probability",
]

#: Log-odds coefficients of the untreated-caries model.
CARIES_COEFFICIENTS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "intercept_age_20_64": -0.2450,  # calibrated: 26% among adults 20-64
        "age_6_19": -0.9166,  # calibrated: 13.3% among ages 6-19 (offset from adults)
        "age_2_5": -1.1166,  # assumption: 0.2 below ages 6-19
        "age_65_plus": -0.40,  # assumption: fewer teeth at risk, more restorations
        "smoking_current": 1.05,
        "smoking_former": 0.30,
        "sugary_drinks_per_day": 0.30,
        "sugary_snacks_per_day": 0.20,
        "brushing_per_day": -0.45,
        "flossing_days_per_week": -0.04,
        "fluoride_toothpaste": -0.60,
        "fluoridated_water_no": 0.35,
        "dental_visits_per_year_capped_4": -0.40,
        "diabetes": 0.35,
    }
)

#: Linear predictor of the cumulative-logit periodontitis model (higher = worse stage).
PERIODONTITIS_COEFFICIENTS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "age_decades_over_30": 0.45,
        "smoking_current": 0.95,
        "smoking_former": 0.35,
        "diabetes": 0.65,
        "sex_male": 0.30,
        "flossing_days_per_week": -0.06,
        "dental_visits_per_year_capped_4": -0.15,
    }
)

#: Cut points: P(stage >= mild) = sigmoid(eta - mild), and so on (calibrated).
PERIODONTITIS_THRESHOLDS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "mild": 1.8122,  # calibrated: 42% any periodontitis among examined adults 30+
        "moderate": 2.2242,  # calibrated: 34% moderate or severe (mild ~8%)
        "severe": 4.3028,  # calibrated: 7.8% severe
    }
)

PERIO_EXAM_AGE: Final[int] = 30  # periodontal exam (CDC/AAP case definition) from 30


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function: both outcome models are logit-linear."""
    return 1.0 / (1.0 + np.exp(-x))


def _codes(values: ArrayLike, vocabulary: tuple[str, ...], column: str) -> np.ndarray:
    """Map category words to integer codes (``fluoridated_water``: empty means unknown)."""
    text = np.char.lower(np.char.strip(np.asarray(values).astype(str)))
    codes = np.full(text.shape, -1, dtype=np.int64)
    for code, word in enumerate(vocabulary):
        codes[text == word] = code
    if column == "fluoridated_water":
        codes[text == ""] = vocabulary.index("unknown")
    if (codes < 0).any():
        bad = sorted(set(text[codes < 0].tolist()))[:5]
        raise SyntheticDataError(
            f"{column}: unknown categories {bad}; expected one of {vocabulary}"
        )
    return codes


def _bools(values: ArrayLike, column: str) -> np.ndarray:
    """Booleans as numpy bools, or contract words (true/false, yes/no, 1/0)."""
    array = np.asarray(values)
    if array.dtype.kind in "biuf":
        return array.astype(bool)
    text = np.char.lower(np.char.strip(array.astype(str)))
    truthy = np.isin(text, ("true", "yes", "1"))
    falsy = np.isin(text, ("false", "no", "0"))
    if not (truthy | falsy).all():
        raise SyntheticDataError(f"{column}: values must be true/false (yes/no, 1/0)")
    return truthy


def caries_age_offset(age: np.ndarray) -> np.ndarray:
    """The intercept plus age-group terms of the caries model (everything but habits).

    The calibration fits these terms, and DMFT follows the habit part of the logit only
    (its age curve is separate), so both subtract this from :func:`caries_logit`.
    """
    c = CARIES_COEFFICIENTS
    return (
        c["intercept_age_20_64"]
        + np.where(age <= 5, c["age_2_5"], 0.0)
        + np.where((age >= 6) & (age <= 19), c["age_6_19"], 0.0)
        + np.where(age >= 65, c["age_65_plus"], 0.0)
    )


def caries_logit(
    age: np.ndarray,
    smoking: np.ndarray,
    brushing: np.ndarray,
    flossing: np.ndarray,
    drinks: np.ndarray,
    snacks: np.ndarray,
    toothpaste: np.ndarray,
    water: np.ndarray,
    visits: np.ndarray,
    diabetes: np.ndarray,
) -> np.ndarray:
    """The untreated-caries log-odds on internal codes (shared by generator and API).

    Written as the age offset plus the habit terms, added left to right, so that
    ``caries_logit(...) - caries_age_offset(age)`` is the habit score DMFT and the
    calibration use, from the one definition of the age terms.
    """
    c = CARIES_COEFFICIENTS
    return (
        caries_age_offset(age)
        + np.where(smoking == 2, c["smoking_current"], 0.0)
        + np.where(smoking == 1, c["smoking_former"], 0.0)
        + c["sugary_drinks_per_day"] * drinks
        + c["sugary_snacks_per_day"] * snacks
        + c["brushing_per_day"] * brushing
        + c["flossing_days_per_week"] * flossing
        + np.where(toothpaste, c["fluoride_toothpaste"], 0.0)
        + np.where(water == 1, c["fluoridated_water_no"], 0.0)
        + c["dental_visits_per_year_capped_4"] * np.minimum(visits, 4.0)
        + np.where(diabetes, c["diabetes"], 0.0)
    )


def untreated_caries_probability(
    *,
    age_years: ArrayLike,
    smoking_status: ArrayLike,
    brushing_per_day: ArrayLike,
    flossing_days_per_week: ArrayLike,
    sugary_drinks_per_day: ArrayLike,
    sugary_snacks_per_day: ArrayLike,
    fluoride_toothpaste: ArrayLike,
    fluoridated_water: ArrayLike,
    dental_visits_per_year: ArrayLike,
    diabetes: ArrayLike,
) -> np.ndarray:
    """P(untreated caries) under the ground-truth logistic model, elementwise (broadcast).

    This is the exact model the generator samples ``untreated_caries`` from, exposed so
    that tests and benchmarks can compare a learned model with the truth (e.g. the Bayes
    AUC). Categories are contract words (``fluoridated_water`` empty = unknown); booleans
    are bools or contract words. Keyword-only because ten positional arrays invite
    silent mix-ups. Coefficients: :data:`CARIES_COEFFICIENTS` and ``docs/data.md``.
    """
    eta = caries_logit(
        np.asarray(age_years, dtype=np.float64),
        _codes(smoking_status, SMOKING_STATUSES, "smoking_status"),
        np.asarray(brushing_per_day, dtype=np.float64),
        np.asarray(flossing_days_per_week, dtype=np.float64),
        np.asarray(sugary_drinks_per_day, dtype=np.float64),
        np.asarray(sugary_snacks_per_day, dtype=np.float64),
        _bools(fluoride_toothpaste, "fluoride_toothpaste"),
        _codes(fluoridated_water, WATER_STATUSES, "fluoridated_water"),
        np.asarray(dental_visits_per_year, dtype=np.float64),
        _bools(diabetes, "diabetes"),
    )
    return np.atleast_1d(sigmoid(eta))


def periodontitis_eta(
    age: np.ndarray,
    smoking: np.ndarray,
    diabetes: np.ndarray,
    male: np.ndarray,
    flossing: np.ndarray,
    visits: np.ndarray,
) -> np.ndarray:
    """The periodontitis linear predictor on internal codes (no thresholds)."""
    c = PERIODONTITIS_COEFFICIENTS
    return (
        c["age_decades_over_30"] * np.maximum(age - PERIO_EXAM_AGE, 0.0) / 10.0
        + np.where(smoking == 2, c["smoking_current"], 0.0)
        + np.where(smoking == 1, c["smoking_former"], 0.0)
        + np.where(diabetes, c["diabetes"], 0.0)
        + np.where(male, c["sex_male"], 0.0)
        + c["flossing_days_per_week"] * flossing
        + c["dental_visits_per_year_capped_4"] * np.minimum(visits, 4.0)
    )


def stage_probabilities(eta: np.ndarray) -> np.ndarray:
    """Stage probabilities (last axis: none..severe) from the linear predictor ``eta``.

    Differences of the cumulative probabilities P(stage >= k), which are ordered because
    the thresholds are, so every stage gets a non-negative share and the shares sum to 1.
    """
    t = PERIODONTITIS_THRESHOLDS
    at_least = np.stack(
        [
            np.ones_like(eta),
            sigmoid(eta - t["mild"]),
            sigmoid(eta - t["moderate"]),
            sigmoid(eta - t["severe"]),
            np.zeros_like(eta),
        ],
        axis=-1,
    )
    return at_least[..., :-1] - at_least[..., 1:]


def periodontitis_stage_probabilities(
    *,
    age_years: ArrayLike,
    smoking_status: ArrayLike,
    diabetes: ArrayLike,
    sex: ArrayLike,
    flossing_days_per_week: ArrayLike,
    dental_visits_per_year: ArrayLike,
) -> np.ndarray:
    """Probabilities of none/mild/moderate/severe periodontitis, shape ``(n, 4)``.

    A proportional-odds (cumulative logit) model: one risk score moves a patient across
    all stage boundaries together, which is how severity behaves clinically and keeps the
    stages ordered. Risk rises with age (per decade over 30; ages under 30 score as 30,
    although the generator never examines them), smoking, diabetes and male sex and falls
    with flossing and check-ups. Rows sum to 1. Coefficients: docs/data.md.
    """
    age = np.atleast_1d(np.asarray(age_years, dtype=np.float64))
    eta = periodontitis_eta(
        age,
        np.atleast_1d(_codes(smoking_status, SMOKING_STATUSES, "smoking_status")),
        np.atleast_1d(_bools(diabetes, "diabetes")),
        np.atleast_1d(_codes(sex, SEXES, "sex")) == 1,
        np.atleast_1d(np.asarray(flossing_days_per_week, dtype=np.float64)),
        np.atleast_1d(np.asarray(dental_visits_per_year, dtype=np.float64)),
    )
    return stage_probabilities(eta)
