"""Shared fixtures-as-functions for the clinic training tests."""

from __future__ import annotations

import numpy as np

from oralfed.client.training import DpRoundPlan, plan_dp_round
from oralfed.schemas.features import NUM_FEATURES


def toy_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable binary task in the model's feature width (AUC well above 0.85)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(np.float32)
    return x, y


def plan(**changes: object) -> DpRoundPlan:
    """A DP round plan with test defaults; keyword arguments override them."""
    arguments: dict[str, object] = dict(
        public_size=1000,
        batch_size=64,
        local_epochs=2,
        learning_rate=0.1,
        clip_norm=1.0,
        total_rounds=5,
        delta=1e-5,
        noise_multiplier=1.0,
    )
    arguments.update(changes)
    return plan_dp_round(**arguments)  # type: ignore[arg-type]
