"""Outcomes of a cohort: untreated caries, DMFT and periodontitis stage.

Caries and periodontitis are sampled from the ground-truth models, so a learned model can
be scored against the truth; DMFT (lifetime decay experience) is not a modelled target but
must look real next to them, so it follows age and the same habits that drive caries.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from oralfed.schemas.synthetic.cohort import Cohort, interp_by_age
from oralfed.schemas.synthetic.ground_truth import (
    PERIO_EXAM_AGE,
    caries_age_offset,
    sigmoid,
    stage_probabilities,
)

__all__ = ["sample_outcomes"]

_PERIO_NOT_EXAMINED: Final[float] = 0.10  # share of adults 30+ without a recorded exam

# Mean DMFT by age (knots) for a patient whose habit log-odds equal _DMFT_RISK_CENTRE.
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


def sample_outcomes(
    cohort: Cohort, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Untreated caries, DMFT and periodontitis stage (-1 = not examined)."""
    n = len(cohort.age)
    logit = cohort.caries_logit()
    caries = rng.random(n) < sigmoid(logit)

    # DMFT: lifetime experience grows with age and with the same habits that drive caries;
    # gamma-Poisson for the overdispersion seen in real DMFT data; current decay adds D.
    habit = logit - caries_age_offset(cohort.age)
    mean = interp_by_age(cohort.age, _DMFT_BY_AGE) * np.exp(0.35 * (habit - _DMFT_RISK_CENTRE))
    dmft = rng.poisson(rng.gamma(4.0, np.maximum(mean, 1e-6) / 4.0))
    decayed = np.where(caries & (cohort.age >= 6), 1 + rng.poisson(0.8, n), 0)
    dmft = np.minimum(dmft + decayed, 32)

    probs = stage_probabilities(cohort.periodontitis_eta())
    u = rng.random(n)
    stage = (u[:, None] > np.cumsum(probs, axis=1)[:, :3]).sum(axis=1)
    examined = (cohort.age >= PERIO_EXAM_AGE) & (rng.random(n) >= _PERIO_NOT_EXAMINED)
    stage = np.where(examined, stage, -1)
    return caries, dmft.astype(np.int64), stage
