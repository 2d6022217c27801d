"""Federated evaluation as a DP release: a noisy score histogram per label, charged first.

Exact held-out metrics are a channel around the ledger: a coordinator that sends a network
which fires only on one patient's feature vector reads that patient's label from the exact
accuracy. So the clinic releases only a histogram of the model's scores over its test
patients, one row per label (negatives, positives) and :data:`SCORE_BINS` bins of the
predicted risk's logit, equal-width on [-:data:`LOGIT_RANGE`, +:data:`LOGIT_RANGE`] (open at
both ends; the edges are public and fixed, so they depend on no data), with discrete
Laplace noise. Logit bins resolve the narrow score ranges of real risk models far better
than equal-width probability bins. One patient changes one cell by one
(add/remove neighbours: L1 sensitivity 1), so the release is (1 / scale)-DP with scale =
1 / ε_eval; the coordinator estimates AUC, accuracy and the number of patients from the
noisy cells (``oralfed.server.evaluation``), with intervals that show the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from oralfed.privacy.events import DiscreteLaplaceEvent
from oralfed.privacy.samplers import discrete_laplace

__all__ = [
    "LOGIT_RANGE",
    "SCORE_BINS",
    "EvaluationRelease",
    "evaluation_event",
    "private_evaluation",
    "score_histogram",
]

SCORE_BINS = 32
LOGIT_RANGE = 4.0


@dataclass(frozen=True)
class EvaluationRelease:
    """What leaves the clinic: noisy counts, row 0 negatives, row 1 positives."""

    histogram: npt.NDArray[np.int64]  # shape (2, SCORE_BINS)
    noise_scale: float


def evaluation_event(epsilon: float) -> DiscreteLaplaceEvent:
    """The mechanism of one evaluation at ``epsilon``."""
    if not epsilon > 0:
        raise ValueError(f"the evaluation epsilon must be positive, got {epsilon}")
    return DiscreteLaplaceEvent(1.0 / epsilon)


def score_histogram(model: nn.Module, x: np.ndarray, y: np.ndarray) -> npt.NDArray[np.int64]:
    """The exact histogram (never released): test patients per (label, score bin)."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy() if len(x) else np.array([])
    position = (logits + LOGIT_RANGE) / (2 * LOGIT_RANGE) * SCORE_BINS
    bins = np.clip(np.floor(position), 0, SCORE_BINS - 1).astype(np.int64)
    histogram = np.zeros((2, SCORE_BINS), dtype=np.int64)
    np.add.at(histogram, (y.astype(np.int64), bins), 1)
    return histogram


def private_evaluation(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epsilon: float
) -> EvaluationRelease:
    """The noisy histogram; call only after :func:`evaluation_event` has been charged."""
    event = evaluation_event(epsilon)
    noisy = discrete_laplace(score_histogram(model, x, y), scale=event.noise_multiplier)
    return EvaluationRelease(noisy, event.noise_multiplier)
