"""Clinic profiles: how the clinics of a synthetic federation differ (the non-IID part).

Real practices differ in who walks in and in local habits; federated training is only worth
testing if the synthetic clinics do too. This module deals out age-mix archetypes and
spreads every other clinic parameter over its range with low-discrepancy sequences, so even
a federation of three clinics is heterogeneous while the pooled population (and hence the
calibrated prevalences) stays stable from seed to seed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

from oralfed.schemas.synthetic.checks import SyntheticDataError, check_n_clinics, check_seed

__all__ = ["AGE_BAND_WEIGHTS", "AGE_MIXES", "COHORT_AGE_BANDS", "ClinicProfile", "clinic_profiles"]

#: Clinic age-mix archetypes: a children's practice, a family practice, a practice serving
#: mostly older adults (care homes, prosthodontics).
AGE_MIXES: Final[tuple[str, ...]] = ("pediatric", "general", "geriatric")
#: Inclusive patient age bands; an archetype is its weights over them (sampled per patient).
COHORT_AGE_BANDS: Final[tuple[tuple[int, int], ...]] = (
    (2, 5),
    (6, 12),
    (13, 19),
    (20, 34),
    (35, 49),
    (50, 64),
    (65, 79),
    (80, 104),
)
AGE_BAND_WEIGHTS: Final[Mapping[str, tuple[float, ...]]] = MappingProxyType(
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
            raise SyntheticDataError(
                f"clinic_id must be 1-40 chars of [A-Za-z0-9_-], got {self.clinic_id!r}"
            )
        if not 1 <= self.n_patients <= 1_000_000:
            raise SyntheticDataError(f"n_patients must be in 1..1000000, got {self.n_patients}")
        if self.age_mix not in AGE_MIXES:
            raise SyntheticDataError(f"age_mix must be one of {AGE_MIXES}, got {self.age_mix!r}")
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
                raise SyntheticDataError(f"{name} must be a share in [0, 1], got {value}")
        if self.current_smoking_rate + 1.6 * self.former_smoking_rate > 1.0:
            raise SyntheticDataError(
                "current_smoking_rate + 1.6 * former_smoking_rate must be <= 1"
            )
        if self.female_share > 0.98:
            raise SyntheticDataError("female_share must leave room for the other sex categories")
        consent = self.consent_care_only + self.consent_statistics + self.consent_research
        if abs(consent - 1.0) > 1e-9:
            raise SyntheticDataError(f"consent shares must sum to 1, got {consent}")
        for name in ("sugar_multiplier", "visit_rate", "diabetes_odds_ratio"):
            if not 0.0 < getattr(self, name) <= 10.0:
                raise SyntheticDataError(f"{name} must be in (0, 10], got {getattr(self, name)}")
        if not -3.0 <= self.hygiene_shift <= 3.0:
            raise SyntheticDataError(f"hygiene_shift must be in [-3, 3], got {self.hygiene_shift}")


def clinic_profiles(n_clinics: int, seed: int) -> list[ClinicProfile]:
    """Draw ``n_clinics`` heterogeneous clinic profiles, deterministically from ``seed``.

    Profile ``k`` depends only on ``seed`` and ``k`` (child ``k`` of one ``SeedSequence``
    plus federation-wide phases from a separate stream), so it is identical whether 3 or
    300 clinics are requested. Sizes are log-uniform-ish over 300..5000 patients; the
    parameters are spread by low-discrepancy sequences (see ``_STRATA_STEPS``) so that even
    small federations cover the ranges: the sizes of four or more clinics span at least 6x
    (three: at least 4x), and any five consecutive clinics include each age mix.
    """
    check_n_clinics(n_clinics)
    check_seed(seed)
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
