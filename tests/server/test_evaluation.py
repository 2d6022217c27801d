"""The coordinator's estimates from noisy evaluation histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from oralfed.client.evaluation import SCORE_BINS, private_evaluation, score_histogram
from oralfed.schemas.features import NUM_FEATURES
from oralfed.schemas.model import build_model
from oralfed.server.evaluation import estimate_evaluation


def test_noise_free_histograms_give_the_binned_auc_and_accuracy() -> None:
    # negatives all in the lowest bin, positives all in the top bin: AUC 1, accuracy 1
    histogram = np.zeros((2, SCORE_BINS))
    histogram[0, 0], histogram[1, -1] = 30, 10
    estimate = estimate_evaluation([histogram.ravel().tolist()], [1e-9])
    assert estimate is not None
    assert estimate.auc == pytest.approx(1.0) and estimate.accuracy == pytest.approx(1.0)
    assert estimate.noisy_examples == 40


def test_the_estimate_tracks_the_exact_auc_within_its_interval() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, NUM_FEATURES)).astype(np.float32)
    model = build_model(hidden_sizes=())  # logistic: a score spread like a trained model's
    with torch.no_grad():
        weights = torch.from_numpy(rng.normal(scale=0.3, size=(1, NUM_FEATURES)))
        next(iter(model.parameters())).copy_(weights)
    probability = model.predict_proba(x)
    y = (rng.random(4000) < probability).astype(np.float32)
    exact = roc_auc_score(y, probability)
    binned = estimate_evaluation([score_histogram(model, x, y).ravel().tolist()], [1e-9])
    assert binned is not None and binned.auc == pytest.approx(exact, abs=0.01)
    release = private_evaluation(model, x, y, epsilon=1.0)
    noisy = estimate_evaluation([release.histogram.ravel().tolist()], [release.noise_scale])
    assert noisy is not None and noisy.auc_interval is not None
    low, high = noisy.auc_interval
    assert low - 0.03 <= exact <= high + 0.03


def test_no_histogram_gives_no_estimate() -> None:
    assert estimate_evaluation([], []) is None
