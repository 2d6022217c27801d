"""Synthetic, heterogeneous clinic exports that follow the data contract.

Why this exists: OralFed must be developed, tested and demonstrated without a single real
patient record. This module writes clinic files that look like real exports (same columns,
same cell syntax, plausible distributions and correlations) and whose outcomes come from a
*documented* ground-truth risk model (``docs/data.md``), so that

* the importer can be tested against files with a known set of broken rows
  (:func:`synthesize_clinic_with_faults` says exactly which rows it broke);
* federated training is non-trivial: clinics differ in age mix, smoking, fluoridation,
  habits and consent (non-IID), yet a pooled model is learnable because the outcome is a
  function of the contract's features;
* the pooled population reproduces the contract's reference prevalence figures, so numbers
  shown in demos are in a believable range.

Everything is numpy only and deterministic: clinic ``k``'s profile and rows depend only on
the seed and on ``k`` (one :class:`numpy.random.SeedSequence` child per clinic), never on
how many clinics are generated or on the wall clock. (Byte-identical output is promised for
one numpy version; numpy does not guarantee identical Generator streams across releases.)
"""

from __future__ import annotations

import csv
import io
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from numbers import Real
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from schemas.contract import (
    CONTRACT_COLUMNS,
    REQUIRED_COLUMNS,
    ConsentTier,
    FluoridatedWater,
    Periodontitis,
    Sex,
    SmokingStatus,
)
from schemas.importer import write_text_atomically

_T = TypeVar("_T")

__all__ = [
    "AGE_MIXES",
    "CARIES_COEFFICIENTS",
    "CONTRACT_COLUMNS",
    "FAULT_KINDS",
    "PERIODONTITIS_COEFFICIENTS",
    "PERIODONTITIS_THRESHOLDS",
    "REFERENCE_DATE",
    "ClinicProfile",
    "clinic_profiles",
    "derive_calibration",
    "periodontitis_stage_probabilities",
    "synthesize_clinic",
    "synthesize_clinic_with_faults",
    "untreated_caries_probability",
    "write_federation",
]

# --------------------------------------------------------------------------------------
# Contract vocabulary, from the one place that defines it.
# --------------------------------------------------------------------------------------

_SEX: Final = tuple(member.value for member in Sex)
_SMOKING: Final = tuple(member.value for member in SmokingStatus)
_WATER: Final = tuple(member.value for member in FluoridatedWater)
_PERIO: Final = tuple(member.value for member in Periodontitis)
_CONSENT: Final = tuple(member.value for member in ConsentTier)

#: Fixed "today" of the synthetic world. Never ``date.today()``: output must not depend on
#: when it is generated. It lies in the past, so no clean ``last_visit_date`` is ever in the
#: future for an importer that checks against the real date.
REFERENCE_DATE: Final[date] = date(2026, 6, 30)
_VISIT_WINDOW_DAYS: Final[int] = 3 * 365  # last visits fall within three years of it

#: Clinic age-mix archetypes: a children's practice, a family practice, a practice serving
#: mostly older adults (care homes, prosthodontics).
AGE_MIXES: Final[tuple[str, ...]] = ("pediatric", "general", "geriatric")
_AGE_BANDS: Final[tuple[tuple[int, int], ...]] = (
    (2, 5),
    (6, 12),
    (13, 19),
    (20, 34),
    (35, 49),
    (50, 64),
    (65, 79),
    (80, 104),
)
_AGE_BAND_WEIGHTS: Final[Mapping[str, tuple[float, ...]]] = MappingProxyType(
    {
        "pediatric": (0.20, 0.34, 0.26, 0.06, 0.08, 0.03, 0.02, 0.01),
        "general": (0.03, 0.07, 0.08, 0.20, 0.22, 0.21, 0.15, 0.04),
        "geriatric": (0.00, 0.01, 0.02, 0.06, 0.10, 0.23, 0.38, 0.20),
    }
)
# The order in which archetypes are dealt to clinics 0, 1, 2, ... (rotated by a per-seed
# phase). Dealing instead of drawing guarantees that any five consecutive clinics include
# one pediatric and one geriatric practice, so every federation of five or more is
# non-IID in age, and the pooled age mix (which drives the pooled prevalences) is stable.
_MIX_ROTATION: Final[tuple[str, ...]] = ("general", "pediatric", "general", "geriatric", "general")

_MIN_PATIENTS: Final[int] = 300
_MAX_PATIENTS: Final[int] = 5000

#: Steps of the additive (Kronecker) sequences that spread each clinic parameter over its
#: range: clinic k uses frac(phase + k * step + jitter), the phase drawn per seed. Drawing
#: clinic parameters independently would let two or three large clinics swing the pooled
#: prevalence by several points from seed to seed; a low-discrepancy sequence keeps the
#: federation as heterogeneous but its pooled mix stable, and clinic k still depends only on
#: (seed, k). The steps are fractional parts of square roots, picked greedily for even
#: coverage at 3..20 clinics and low pairwise correlation (as far as ten points allow; some
#: parameters remain correlated within one federation). 1/sqrt(2) for the
#: size makes clinics k and k+5 (which share an age mix) differ in size by about half the
#: log-range, so no archetype is systematically the largest.
_STRATA_STEPS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "size": 0.707107,
        "current_smoking": 0.190906,
        "former_smoking": 0.390719,
        "fluoridation": 0.219544,
        "water_unknown": 0.456832,
        "toothpaste": 0.734994,
        "sugar": 0.362291,
        "hygiene": 0.841444,
        "visits": 0.575837,
        "diabetes": 0.688578,
        "female": 0.763055,
        "research": 0.824228,
        "statistics": 0.591663,
    }
)
_STRATA_JITTER: Final[float] = 0.03

# --------------------------------------------------------------------------------------
# Ground truth. Every number is documented, with its rationale, in docs/data.md. The
# intercepts and thresholds marked "calibrated" were fitted once with derive_calibration()
# on the default pooled population (clinic_profiles(10, s) for s in range(400)), frozen.
# --------------------------------------------------------------------------------------

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

_PERIO_EXAM_AGE: Final[int] = 30  # periodontal exam (CDC/AAP case definition) from 30
_PERIO_NOT_EXAMINED: Final[float] = 0.10  # share of adults 30+ without a recorded exam
_BMI_MISSING: Final[float] = 0.10
_VISIT_DATE_MISSING: Final[float] = 0.05
_WATER_EMPTY_SHARE_OF_UNKNOWN: Final[float] = 0.4  # unknown written as an empty cell

#: The kinds of contract violation a faulty row can carry (exactly one per bad row).
FAULT_KINDS: Final[tuple[str, ...]] = (
    "age_out_of_range",
    "unknown_category",
    "malformed_boolean",
    "number_out_of_range",
    "non_numeric_number",
    "empty_required_cell",
    "future_visit_date",
    "bad_date_format",
    "duplicate_patient_ref",
    "invalid_patient_ref",
)


# --------------------------------------------------------------------------------------
# Clinic profiles
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClinicProfile:
    """How one clinic's patients differ from the others' (the source of non-IID data).

    Real practices differ in who walks in (a children's practice vs. one near care homes),
    in local smoking and water fluoridation, in habits and attendance, and in how many
    patients agree to research. Each field shifts one of those; the ground-truth risk
    model itself is shared, so a pooled model remains learnable.
    """

    clinic_id: str  # "clinic-01", ...: also names the CSV file and prefixes patient_ref
    n_patients: int
    age_mix: str  # one of AGE_MIXES
    current_smoking_rate: float  # P(current smoker) for adults 20-64; scaled for other ages
    former_smoking_rate: float  # P(former smoker) for a 50-year-old; rises with age
    fluoridated_water_rate: float  # P(yes) among patients whose water status is known
    water_unknown_rate: float  # P(status unknown); part of these are written empty
    fluoride_toothpaste_rate: float  # baseline P(uses fluoride toothpaste)
    sugar_multiplier: float  # multiplies the mean sugary drinks and snacks per day
    hygiene_shift: float  # shifts the latent "oral-health engagement" (brushing, flossing)
    visit_rate: float  # mean dental check-ups per year before individual variation
    diabetes_odds_ratio: float  # local diabetes odds relative to the national curve
    female_share: float
    consent_care_only: float  # consent mix; the three shares sum to 1
    consent_statistics: float
    consent_research: float

    def __post_init__(self) -> None:
        """Refuse impossible profiles early, with the field named, not deep in numpy."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", self.clinic_id):
            raise ValueError(
                f"clinic_id must be 1-40 chars of [A-Za-z0-9_-], got {self.clinic_id!r}"
            )
        if not 1 <= self.n_patients <= 1_000_000:
            raise ValueError(f"n_patients must be in 1..1000000, got {self.n_patients}")
        if self.age_mix not in AGE_MIXES:
            raise ValueError(f"age_mix must be one of {AGE_MIXES}, got {self.age_mix!r}")
        rates = {
            "current_smoking_rate": self.current_smoking_rate,
            "former_smoking_rate": self.former_smoking_rate,
            "fluoridated_water_rate": self.fluoridated_water_rate,
            "water_unknown_rate": self.water_unknown_rate,
            "fluoride_toothpaste_rate": self.fluoride_toothpaste_rate,
            "female_share": self.female_share,
            "consent_care_only": self.consent_care_only,
            "consent_statistics": self.consent_statistics,
            "consent_research": self.consent_research,
        }
        for name, value in rates.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {value}")
        if self.current_smoking_rate + 1.6 * self.former_smoking_rate > 1.0:
            raise ValueError("current_smoking_rate + 1.6 * former_smoking_rate must be <= 1")
        if self.female_share > 0.98:
            raise ValueError("female_share must leave room for the other sex categories")
        consent = self.consent_care_only + self.consent_statistics + self.consent_research
        if abs(consent - 1.0) > 1e-9:
            raise ValueError(f"consent shares must sum to 1, got {consent}")
        for name in ("sugar_multiplier", "visit_rate", "diabetes_odds_ratio"):
            if not 0.0 < getattr(self, name) <= 10.0:
                raise ValueError(f"{name} must be in (0, 10], got {getattr(self, name)}")
        if not -3.0 <= self.hygiene_shift <= 3.0:
            raise ValueError(f"hygiene_shift must be in [-3, 3], got {self.hygiene_shift}")


def clinic_profiles(n_clinics: int, seed: int) -> list[ClinicProfile]:
    """Draw ``n_clinics`` heterogeneous clinic profiles, deterministically from ``seed``.

    Profile ``k`` depends only on ``seed`` and ``k`` (child ``k`` of one ``SeedSequence``
    plus federation-wide phases from a separate stream), so it is identical whether 3 or
    300 clinics are requested. Sizes are log-uniform-ish over 300..5000 patients; the
    parameters are spread by low-discrepancy sequences (see ``_STRATA_STEPS``) so that even
    small federations cover the ranges: the sizes of four or more clinics span at least 6x
    (three: at least 4x), and any five consecutive clinics include each age mix.
    """
    _check_n_clinics(n_clinics)
    _check_seed(seed)
    federation = np.random.default_rng(np.random.SeedSequence([seed, 0x0F_ED]))
    phases = {name: float(federation.random()) for name in _STRATA_STEPS}
    mix_phase = int(federation.integers(len(_MIX_ROTATION)))
    children = np.random.SeedSequence([seed, 0xC1_1C]).spawn(n_clinics)
    return [
        _draw_profile(k, np.random.default_rng(children[k]), phases, mix_phase)
        for k in range(n_clinics)
    ]


def _draw_profile(
    k: int, rng: np.random.Generator, phases: Mapping[str, float], mix_phase: int
) -> ClinicProfile:
    """One clinic's parameters from its stratified positions in [0, 1)."""
    jitter = rng.uniform(-_STRATA_JITTER, _STRATA_JITTER, len(_STRATA_STEPS))
    u = {
        name: (phases[name] + k * step + float(jitter[i])) % 1.0
        for i, (name, step) in enumerate(_STRATA_STEPS.items())
    }
    research = 0.5 + 0.4 * u["research"]
    statistics = (1.0 - research) * (0.3 + 0.4 * u["statistics"])
    return ClinicProfile(
        clinic_id=f"clinic-{k + 1:02d}",
        n_patients=round(_MIN_PATIENTS * (_MAX_PATIENTS / _MIN_PATIENTS) ** u["size"]),
        age_mix=_MIX_ROTATION[(mix_phase + k) % len(_MIX_ROTATION)],
        current_smoking_rate=round(0.08 + 0.22 * u["current_smoking"], 4),
        former_smoking_rate=round(0.12 + 0.16 * u["former_smoking"], 4),
        # skewed towards high coverage, as in countries that fluoridate (mean about 0.7)
        fluoridated_water_rate=round(0.25 + 0.72 * u["fluoridation"] ** 0.6, 4),
        water_unknown_rate=round(0.03 + 0.12 * u["water_unknown"], 4),
        fluoride_toothpaste_rate=round(0.80 + 0.17 * u["toothpaste"], 4),
        sugar_multiplier=round(float(np.exp(-0.4 + 0.8 * u["sugar"])), 4),
        hygiene_shift=round(-0.45 + 0.9 * u["hygiene"], 4),
        visit_rate=round(0.8 + 1.2 * u["visits"], 4),
        diabetes_odds_ratio=round(0.7 + 0.7 * u["diabetes"], 4),
        female_share=round(0.48 + 0.10 * u["female"], 4),
        consent_care_only=1.0 - research - statistics,
        consent_statistics=statistics,
        consent_research=research,
    )


# --------------------------------------------------------------------------------------
# Ground-truth models (public, vectorised)
# --------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
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
        raise ValueError(f"{column}: unknown categories {bad}; expected one of {vocabulary}")
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
        raise ValueError(f"{column}: values must be true/false (yes/no, 1/0)")
    return truthy


def _caries_logit(
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
    """The untreated-caries log-odds on internal codes (shared by generator and API)."""
    c = CARIES_COEFFICIENTS
    return (
        c["intercept_age_20_64"]
        + np.where(age <= 5, c["age_2_5"], 0.0)
        + np.where((age >= 6) & (age <= 19), c["age_6_19"], 0.0)
        + np.where(age >= 65, c["age_65_plus"], 0.0)
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
    eta = _caries_logit(
        np.asarray(age_years, dtype=np.float64),
        _codes(smoking_status, _SMOKING, "smoking_status"),
        np.asarray(brushing_per_day, dtype=np.float64),
        np.asarray(flossing_days_per_week, dtype=np.float64),
        np.asarray(sugary_drinks_per_day, dtype=np.float64),
        np.asarray(sugary_snacks_per_day, dtype=np.float64),
        _bools(fluoride_toothpaste, "fluoride_toothpaste"),
        _codes(fluoridated_water, _WATER, "fluoridated_water"),
        np.asarray(dental_visits_per_year, dtype=np.float64),
        _bools(diabetes, "diabetes"),
    )
    return np.atleast_1d(_sigmoid(eta))


def _perio_eta(
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
        c["age_decades_over_30"] * np.maximum(age - _PERIO_EXAM_AGE, 0.0) / 10.0
        + np.where(smoking == 2, c["smoking_current"], 0.0)
        + np.where(smoking == 1, c["smoking_former"], 0.0)
        + np.where(diabetes, c["diabetes"], 0.0)
        + np.where(male, c["sex_male"], 0.0)
        + c["flossing_days_per_week"] * flossing
        + c["dental_visits_per_year_capped_4"] * np.minimum(visits, 4.0)
    )


def _stage_probabilities(eta: np.ndarray) -> np.ndarray:
    t = PERIODONTITIS_THRESHOLDS
    at_least = np.stack(
        [
            np.ones_like(eta),
            _sigmoid(eta - t["mild"]),
            _sigmoid(eta - t["moderate"]),
            _sigmoid(eta - t["severe"]),
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
    eta = _perio_eta(
        age,
        np.atleast_1d(_codes(smoking_status, _SMOKING, "smoking_status")),
        np.atleast_1d(_bools(diabetes, "diabetes")),
        np.atleast_1d(_codes(sex, _SEX, "sex")) == 1,
        np.atleast_1d(np.asarray(flossing_days_per_week, dtype=np.float64)),
        np.atleast_1d(np.asarray(dental_visits_per_year, dtype=np.float64)),
    )
    return _stage_probabilities(eta)


# --------------------------------------------------------------------------------------
# Patient-level sampling
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cohort:
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
        return _caries_logit(
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

    def perio_eta(self) -> np.ndarray:
        return _perio_eta(
            self.age, self.smoking, self.diabetes, self.sex == 1, self.flossing, self.visits
        )


def _interp_by_age(age: np.ndarray, points: tuple[tuple[float, float], ...]) -> np.ndarray:
    xs, ys = zip(*points, strict=True)
    return np.interp(age, xs, ys)


def _sample_cohort(profile: ClinicProfile, rng: np.random.Generator) -> _Cohort:
    """Draw the patients' features. The order of draws is part of the determinism contract."""
    n = profile.n_patients
    p = profile
    weights = np.asarray(_AGE_BAND_WEIGHTS[p.age_mix])
    band = rng.choice(len(_AGE_BANDS), size=n, p=weights / weights.sum())
    low = np.asarray([b[0] for b in _AGE_BANDS])[band]
    high = np.asarray([b[1] for b in _AGE_BANDS])[band]
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

    p_floss = _sigmoid(-1.1 + 1.0 * z + 0.3 * female - 0.8 * (age <= 5))
    flossing = rng.binomial(7, p_floss).astype(np.float64)

    drink_age = _interp_by_age(
        age, ((2, 0.5), (8, 0.9), (16, 1.6), (25, 1.3), (45, 0.8), (70, 0.45), (104, 0.4))
    )
    snack_age = _interp_by_age(
        age, ((2, 1.6), (10, 2.0), (18, 1.6), (30, 1.2), (60, 1.0), (104, 0.9))
    )
    lifestyle = np.exp(-0.25 * z + 0.15 * (smoking == 2))
    drinks = _gamma_half_steps(rng, drink_age * p.sugar_multiplier * lifestyle, shape=0.9)
    snacks = _gamma_half_steps(rng, snack_age * p.sugar_multiplier * lifestyle, shape=1.3)

    toothpaste_logit = np.log(p.fluoride_toothpaste_rate / (1 - p.fluoride_toothpaste_rate))
    toothpaste = rng.random(n) < _sigmoid(toothpaste_logit + 0.4 * z)

    u = rng.random(n)
    water_unknown = u < p.water_unknown_rate
    water_yes = rng.random(n) < p.fluoridated_water_rate
    water = np.where(water_unknown, 2, np.where(water_yes, 0, 1))
    water_empty = water_unknown & (rng.random(n) < _WATER_EMPTY_SHARE_OF_UNKNOWN)

    visit_mean = p.visit_rate * np.exp(0.35 * z + 0.1 * female) * np.where(age <= 5, 0.7, 1.0)
    visits = np.minimum(rng.poisson(visit_mean), 12).astype(np.float64)

    bmi_median = _interp_by_age(
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
    diabetes = rng.random(n) < _sigmoid(diabetes_logit)

    consent = rng.choice(
        3, size=n, p=[p.consent_care_only, p.consent_statistics, p.consent_research]
    )
    return _Cohort(
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


_DMFT_BY_AGE: Final = (
    (2, 0.0),
    (5, 0.05),
    (8, 0.4),
    (12, 1.2),
    (19, 3.0),
    (30, 8.0),
    (45, 13.0),
    (60, 17.0),
    (75, 21.0),
    (104, 24.0),
)
_DMFT_RISK_CENTRE: Final[float] = -1.0  # typical habit log-odds; centres the risk multiplier


def _sample_outcomes(
    cohort: _Cohort, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Untreated caries, DMFT and periodontitis stage (-1 = not examined)."""
    n = cohort.age.shape[0]
    logit = cohort.caries_logit()
    caries = rng.random(n) < _sigmoid(logit)

    # DMFT: lifetime experience grows with age and with the same habits that drive caries;
    # gamma-Poisson for the overdispersion seen in real DMFT data; current decay adds D.
    habit = logit - _age_offsets(cohort.age)
    mean = _interp_by_age(cohort.age, _DMFT_BY_AGE) * np.exp(0.35 * (habit - _DMFT_RISK_CENTRE))
    dmft = rng.poisson(rng.gamma(4.0, np.maximum(mean, 1e-6) / 4.0))
    decayed = np.where(caries & (cohort.age >= 6), 1 + rng.poisson(0.8, n), 0)
    dmft = np.minimum(dmft + decayed, 32)

    probs = _stage_probabilities(cohort.perio_eta())
    u = rng.random(n)
    stage = (u[:, None] > np.cumsum(probs, axis=1)[:, :3]).sum(axis=1)
    examined = (cohort.age >= _PERIO_EXAM_AGE) & (rng.random(n) >= _PERIO_NOT_EXAMINED)
    stage = np.where(examined, stage, -1)
    return caries, dmft.astype(np.int64), stage


def _age_offsets(age: np.ndarray) -> np.ndarray:
    """The intercept plus age-group terms of the caries model (everything but habits)."""
    c = CARIES_COEFFICIENTS
    return (
        c["intercept_age_20_64"]
        + np.where(age <= 5, c["age_2_5"], 0.0)
        + np.where((age >= 6) & (age <= 19), c["age_6_19"], 0.0)
        + np.where(age >= 65, c["age_65_plus"], 0.0)
    )


# --------------------------------------------------------------------------------------
# Rows (CSV cells)
# --------------------------------------------------------------------------------------


def _clinic_streams(profile: ClinicProfile, seed: int) -> list[np.random.SeedSequence]:
    """Independent streams for features, outcomes, cell formatting and faults.

    Keyed by the seed and the clinic id (not by position), and split so that injecting
    faults never changes the clean cells of the other rows.
    """
    key = zlib.crc32(profile.clinic_id.encode("utf-8"))
    return np.random.SeedSequence([seed, 0xDA7A, key]).spawn(4)


def _ref_prefix(clinic_id: str) -> str:
    match = re.fullmatch(r"clinic-(\d+)", clinic_id)
    return f"c{int(match.group(1)):02d}" if match else clinic_id


def _number(value: float) -> str:
    """Contract numbers: '.' decimal mark, no needless '.0' on whole values."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _bool_cell(value: bool) -> str:
    return "true" if value else "false"


def _clean_rows(profile: ClinicProfile, seed: int) -> list[dict[str, str]]:
    feature_ss, outcome_ss, cell_ss, _ = _clinic_streams(profile, seed)
    cohort = _sample_cohort(profile, np.random.default_rng(feature_ss))
    caries, dmft, stage = _sample_outcomes(cohort, np.random.default_rng(outcome_ss))

    rng = np.random.default_rng(cell_ss)
    n = profile.n_patients
    numbers = rng.choice(999_999, size=n, replace=False) + 1
    prefix = _ref_prefix(profile.clinic_id)
    bmi_missing = rng.random(n) < _BMI_MISSING
    # Frequent attenders were seen recently; people with no check-up last year 1-3 years ago.
    recent = rng.exponential(365.0 / (cohort.visits + 0.5))
    lapsed = rng.uniform(365.0, _VISIT_WINDOW_DAYS, n)
    days_ago = np.where(cohort.visits >= 1, np.minimum(recent, _VISIT_WINDOW_DAYS), lapsed)
    days_ago = days_ago.astype(np.int64)
    date_missing = rng.random(n) < _VISIT_DATE_MISSING

    rows: list[dict[str, str]] = []
    for i in range(n):
        water = "" if cohort.water_empty[i] else _WATER[cohort.water[i]]
        visit = REFERENCE_DATE - timedelta(days=int(days_ago[i]))
        rows.append(
            {
                "patient_ref": f"{prefix}-{numbers[i]:06d}",
                "age_years": str(int(cohort.age[i])),
                "sex": _SEX[cohort.sex[i]],
                "smoking_status": _SMOKING[cohort.smoking[i]],
                "brushing_per_day": _number(cohort.brushing[i]),
                "flossing_days_per_week": str(int(cohort.flossing[i])),
                "sugary_drinks_per_day": _number(cohort.drinks[i]),
                "sugary_snacks_per_day": _number(cohort.snacks[i]),
                "fluoride_toothpaste": _bool_cell(bool(cohort.toothpaste[i])),
                "fluoridated_water": water,
                "dental_visits_per_year": _number(cohort.visits[i]),
                "diabetes": _bool_cell(bool(cohort.diabetes[i])),
                "bmi": "" if bmi_missing[i] else f"{cohort.bmi[i]:.1f}",
                "last_visit_date": "" if date_missing[i] else visit.isoformat(),
                "dmft": str(int(dmft[i])),
                "untreated_caries": _bool_cell(bool(caries[i])),
                "periodontitis": "" if stage[i] < 0 else _PERIO[stage[i]],
                "consent_tier": _CONSENT[cohort.consent[i]],
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------

_BAD_AGES: Final = ("150", "-1", "0", "1", "111", "999")
_BAD_CATEGORIES: Final = (
    ("sex", "woman"),
    ("sex", "x"),
    ("smoking_status", "sometimes"),
    ("smoking_status", "social"),
    ("fluoridated_water", "partly"),
    ("periodontitis", "stage-5"),
    ("periodontitis", "gingivitis"),
    ("consent_tier", "all"),
)
_BOOLEAN_COLUMNS: Final = ("fluoride_toothpaste", "diabetes", "untreated_caries")
_BAD_BOOLEANS: Final = ("maybe", "2", "tru", "unsure", "-")
_OUT_OF_RANGE: Final = (
    ("brushing_per_day", "9"),
    ("brushing_per_day", "7.5"),
    ("flossing_days_per_week", "8"),
    ("flossing_days_per_week", "-1"),
    ("sugary_drinks_per_day", "25"),
    ("sugary_snacks_per_day", "21.5"),
    ("dental_visits_per_year", "13"),
    ("dental_visits_per_year", "52"),
    ("bmi", "95.0"),
    ("bmi", "5.2"),
    ("dmft", "33"),
    ("dmft", "40"),
)
_NON_NUMERIC: Final = (
    ("age_years", "twelve"),
    ("brushing_per_day", "two"),
    ("brushing_per_day", "1,5"),
    ("flossing_days_per_week", "often"),
    ("sugary_drinks_per_day", "a few"),
    ("sugary_drinks_per_day", "0,5"),
    ("sugary_snacks_per_day", "lots"),
    ("dental_visits_per_year", "twice"),
    ("bmi", "heavy"),
    ("dmft", "many"),
)
_EMPTY_REQUIRED: Final = tuple(c for c in REQUIRED_COLUMNS if c != "patient_ref")
_REF_BAD_SEPARATORS: Final = (" ", "#", "/", ".", "@", "é")


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def _apply_fault(
    kind: str,
    row: dict[str, str],
    rng: np.random.Generator,
    duplicate_source: str | None,
) -> None:
    """Break exactly one contract rule in ``row`` (in place)."""
    if kind == "age_out_of_range":
        row["age_years"] = _pick(rng, _BAD_AGES)
    elif kind == "unknown_category":
        column, value = _pick(rng, _BAD_CATEGORIES)
        row[column] = value
    elif kind == "malformed_boolean":
        row[_pick(rng, _BOOLEAN_COLUMNS)] = _pick(rng, _BAD_BOOLEANS)
    elif kind == "number_out_of_range":
        column, value = _pick(rng, _OUT_OF_RANGE)
        row[column] = value
    elif kind == "non_numeric_number":
        column, value = _pick(rng, _NON_NUMERIC)
        row[column] = value
    elif kind == "empty_required_cell":
        row[_pick(rng, _EMPTY_REQUIRED)] = ""
    elif kind == "future_visit_date":
        # A century typo (2126 for 2026): in the future for any importer run this century.
        year = REFERENCE_DATE.year + 100 + int(rng.integers(4))
        row["last_visit_date"] = date(year, int(rng.integers(1, 13)), 15).isoformat()
    elif kind == "bad_date_format":
        written = row["last_visit_date"] or (REFERENCE_DATE - timedelta(days=100)).isoformat()
        year, month, day = written.split("-")
        formats = (
            f"{day}/{month}/{year}",
            f"{year}/{month}/{day}",
            f"{year}{month}{day}",
            f"{year}-02-30",
            f"{year}-13-{day}",
            f"{int(month)}/{int(day)}/{year}",
        )
        row["last_visit_date"] = _pick(rng, formats)
    elif kind == "duplicate_patient_ref":
        assert duplicate_source is not None
        row["patient_ref"] = duplicate_source
    elif kind == "invalid_patient_ref":
        row["patient_ref"] = row["patient_ref"].replace("-", _pick(rng, _REF_BAD_SEPARATORS))
    else:  # pragma: no cover - FAULT_KINDS and this function are kept in step
        raise AssertionError(kind)


def synthesize_clinic_with_faults(
    profile: ClinicProfile, seed: int, bad_row_fraction: float = 0.0
) -> tuple[list[dict[str, str]], list[int]]:
    """Rows for one clinic plus the 1-based data-row numbers that were made invalid.

    ``round(bad_row_fraction * n_patients)`` distinct rows each get exactly one violation
    (a kind from :data:`FAULT_KINDS`, chosen at random), so an importer test can assert
    that precisely these rows are rejected. A duplicated ``patient_ref`` is copied from an
    earlier *clean* row: an importer keeps the first occurrence and rejects the later one,
    so only the modified row is bad. Faults use their own random stream: the other rows
    are byte-identical to the clean output for the same seed.
    """
    _check_seed(seed)
    _check_fraction(bad_row_fraction)
    rows = _clean_rows(profile, seed)
    n_bad = round(bad_row_fraction * len(rows))
    if n_bad == 0:
        return rows, []
    rng = np.random.default_rng(_clinic_streams(profile, seed)[3])
    bad = np.sort(rng.choice(len(rows), size=n_bad, replace=False))
    is_bad = np.zeros(len(rows), dtype=bool)
    is_bad[bad] = True
    # Clean rows that may lend their ref, in order; each lends at most once.
    lenders = np.flatnonzero(~is_bad)
    used = np.zeros(len(rows), dtype=bool)
    for index in bad.tolist():
        kind = _pick(rng, FAULT_KINDS)
        source: str | None = None
        if kind == "duplicate_patient_ref":
            earlier = lenders[(lenders < index) & ~used[lenders]]
            if earlier.size == 0:  # nothing before this row to copy: break it another way
                kind = "invalid_patient_ref"
            else:
                lender = int(earlier[int(rng.integers(earlier.size))])
                used[lender] = True
                source = rows[lender]["patient_ref"]
        _apply_fault(kind, rows[index], rng, source)
    return rows, [int(i) + 1 for i in bad]


def synthesize_clinic(
    profile: ClinicProfile, seed: int, bad_row_fraction: float = 0.0
) -> list[dict[str, str]]:
    """One clinic's rows as CSV cells (strings; "true"/"false"; "" = missing).

    Keys are :data:`CONTRACT_COLUMNS`; ``patient_ref`` is unique unless a duplicate was
    injected as a fault. See :func:`synthesize_clinic_with_faults` for which rows are bad.
    """
    rows, _ = synthesize_clinic_with_faults(profile, seed, bad_row_fraction)
    return rows


def write_federation(
    out_dir: Path, n_clinics: int, seed: int, bad_row_fraction: float = 0.0
) -> list[Path]:
    """Write ``clinic-01.csv`` ... into ``out_dir`` and return their paths.

    Each file is written to a temporary file in the same directory and renamed into place
    (``os.replace``), so a clinic process watching the folder never reads half a file.
    """
    _check_n_clinics(n_clinics)
    _check_seed(seed)
    _check_fraction(bad_row_fraction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for profile in clinic_profiles(n_clinics, seed):
        rows = synthesize_clinic(profile, seed, bad_row_fraction)
        paths.append(_write_csv_atomically(out_dir / f"{profile.clinic_id}.csv", rows))
    return paths


def _write_csv_atomically(destination: Path, rows: Iterable[Mapping[str, str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CONTRACT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(destination, buffer.getvalue())
    return destination


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _check_n_clinics(n_clinics: int) -> None:
    if isinstance(n_clinics, bool) or not isinstance(n_clinics, int | np.integer):
        raise ValueError(f"n_clinics must be an integer >= 1, got {n_clinics!r}")
    if n_clinics < 1:
        raise ValueError(f"n_clinics must be at least 1, got {n_clinics}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_fraction(bad_row_fraction: float) -> None:
    if (
        isinstance(bad_row_fraction, bool)
        or not isinstance(bad_row_fraction, Real)
        or not 0.0 <= float(bad_row_fraction) <= 0.5
    ):
        raise ValueError(
            f"bad_row_fraction must be a number in [0, 0.5] (share of rows to break), "
            f"got {bad_row_fraction!r}"
        )


# --------------------------------------------------------------------------------------
# Calibration (run offline; the frozen constants above came from it)
# --------------------------------------------------------------------------------------


def _solve_shift(base: np.ndarray, target: float) -> float:
    """The constant ``s`` with mean(sigmoid(base + s)) == target (bisection)."""
    low, high = -20.0, 20.0
    for _ in range(100):
        mid = (low + high) / 2
        if _sigmoid(base + mid).mean() < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def derive_calibration(seeds: Iterable[int] = range(400), n_clinics: int = 10) -> dict[str, float]:
    """Re-derive the calibrated constants on the default pooled population.

    Uses expected probabilities over the sampled features (no outcome noise). Run it after
    changing any feature distribution or coefficient and paste the result into
    :data:`CARIES_COEFFICIENTS` / :data:`PERIODONTITIS_THRESHOLDS` (docs/data.md says how).
    """
    ages, habits, etas = [], [], []
    for seed in seeds:
        for profile in clinic_profiles(n_clinics, seed):
            stream = _clinic_streams(profile, seed)[0]
            cohort = _sample_cohort(profile, np.random.default_rng(stream))
            ages.append(cohort.age)
            habits.append(cohort.caries_logit() - _age_offsets(cohort.age))
            etas.append(cohort.perio_eta())
    age, habit, eta = np.concatenate(ages), np.concatenate(habits), np.concatenate(etas)
    c = CARIES_COEFFICIENTS
    intercept = _solve_shift(habit[(age >= 20) & (age <= 64)], 0.26)
    youth_shift = _solve_shift(habit[(age >= 6) & (age <= 19)], 0.133) - intercept
    eta = eta[age >= _PERIO_EXAM_AGE]
    return {
        "intercept_age_20_64": intercept,
        "age_6_19": youth_shift,
        "age_2_5": youth_shift + (c["age_2_5"] - c["age_6_19"]),
        "perio_mild": -_solve_shift(eta, 0.42),
        "perio_moderate": -_solve_shift(eta, 0.34),
        "perio_severe": -_solve_shift(eta, 0.078),
    }
