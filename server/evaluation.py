"""Model quality from the clinics' noisy evaluation histograms, with the noise shown.

Each clinic releases counts of its test patients per (label, score bin) with discrete
Laplace noise (``oralfed.client.evaluation``). Summed over the clinics, the histograms give
AUC (the Mann-Whitney statistic over bins, ties counted one half), accuracy at a 0.5
threshold (the bins are on the logit scale, symmetric about 0) and the number of
patients, all post-processing of charged releases. Negative noisy cells are read as 0.
The 95 % intervals come from a parametric bootstrap: the same noise the clinics added,
added again to the released histogram, :data:`BOOTSTRAP_DRAWS` times. Binning costs a
little AUC resolution (ties within a bin); the interval covers noise, not binning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BOOTSTRAP_DRAWS", "EvaluationEstimate", "estimate_evaluation"]

BOOTSTRAP_DRAWS = 400
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EvaluationEstimate:
    auc: float | None
    auc_interval: tuple[float, float] | None
    accuracy: float | None
    accuracy_interval: tuple[float, float] | None
    noisy_examples: int  # the summed noisy counts (a charged release, post-processed)
    clinics: int
    noise_scales: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "mechanism": "discrete Laplace score histograms (2 labels x bins) per clinic",
            "auc": self.auc,
            "auc_95": list(self.auc_interval) if self.auc_interval else None,
            "accuracy": self.accuracy,
            "accuracy_95": list(self.accuracy_interval) if self.accuracy_interval else None,
            "noisy_examples": self.noisy_examples,
            "clinics": self.clinics,
            "noise_scales": list(self.noise_scales),
        }


def estimate_evaluation(
    histograms: Sequence[Sequence[float]], noise_scales: Sequence[float], seed: int = 0
) -> EvaluationEstimate | None:
    """Estimates from the clinics' flattened (2 x bins) histograms; None without any."""
    if not histograms:
        return None
    stacked = np.asarray([np.asarray(h, dtype=np.float64) for h in histograms])
    bins = stacked.shape[1] // 2
    released = stacked.reshape(len(histograms), 2, bins).sum(axis=0)
    auc, accuracy = _auc(released), _accuracy(released)
    rng = np.random.default_rng(seed)  # the bootstrap's noise is public: it needs no secret
    draws_auc, draws_accuracy = [], []
    for _ in range(BOOTSTRAP_DRAWS):
        noise = sum(rng.laplace(0.0, scale, size=(2, bins)) for scale in noise_scales)
        replica = released + noise
        draws_auc.append(_auc(replica))
        draws_accuracy.append(_accuracy(replica))
    return EvaluationEstimate(
        auc=auc,
        auc_interval=_interval(draws_auc),
        accuracy=accuracy,
        accuracy_interval=_interval(draws_accuracy),
        noisy_examples=int(max(0.0, released.sum())),
        clinics=len(histograms),
        noise_scales=tuple(float(s) for s in noise_scales),
    )


def _auc(histogram: FloatArray) -> float | None:
    negatives, positives = np.clip(histogram, 0.0, None)
    total = negatives.sum() * positives.sum()
    if total <= 0:
        return None
    below = np.concatenate(([0.0], np.cumsum(negatives)[:-1]))
    return float(np.sum(positives * (below + negatives / 2)) / total)


def _accuracy(histogram: FloatArray) -> float | None:
    negatives, positives = np.clip(histogram, 0.0, None)
    total = negatives.sum() + positives.sum()
    if total <= 0:
        return None
    half = len(negatives) // 2
    return float((negatives[:half].sum() + positives[half:].sum()) / total)


def _interval(values: list[float | None]) -> tuple[float, float] | None:
    finite = [v for v in values if v is not None]
    if not finite:
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)
