"""The clinic's training step: DP-SGD with Opacus, plus the non-private trainer for baselines.

The privacy cost of a round is fixed before any gradient is computed: Poisson sampling at
``q = 1 / ceil(n / batch_size)`` (exactly Opacus's rule), ``steps = epochs * ceil(n / batch)``
and the noise multiplier. That triple is what the ledger charges; training then spends it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from oralfed.privacy.calibration import CalibrationCache, noise_multiplier_for_epsilon
from oralfed.privacy.events import DpSgdEvent
from oralfed.schemas.errors import ExitCode, OralFedError


class TrainingConfigError(OralFedError, ValueError):
    """A training request that cannot be run as asked (the message says which setting)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class DpRoundPlan:
    """What one clinic will run in one round; ``event`` is what the ledger charges."""

    batch_size: int
    local_epochs: int
    learning_rate: float
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    proximal_mu: float = 0.0

    @property
    def event(self) -> DpSgdEvent:
        return DpSgdEvent(self.noise_multiplier, self.sample_rate, self.steps)


def plan_dp_round(
    *,
    n_train: int,
    batch_size: int,
    local_epochs: int,
    learning_rate: float,
    clip_norm: float,
    total_rounds: int,
    delta: float,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    proximal_mu: float = 0.0,
    calibration_cache: CalibrationCache | None = None,
) -> DpRoundPlan:
    """Fix a round's mechanism; with ``target_epsilon`` the noise is calibrated so that
    ``total_rounds`` such rounds spend exactly that ε at ``delta`` on this clinic's data
    (through ``calibration_cache`` when given: a deployed node calibrates once per plan)."""
    if n_train < 1:
        raise TrainingConfigError("no training rows")
    if batch_size < 1 or local_epochs < 1 or total_rounds < 1:
        raise TrainingConfigError("batch size, local epochs and rounds must be at least 1")
    if not (clip_norm > 0 and learning_rate > 0):
        raise TrainingConfigError("clip norm and learning rate must be positive")
    steps_per_epoch = math.ceil(n_train / batch_size)
    sample_rate = 1.0 / steps_per_epoch
    steps = local_epochs * steps_per_epoch
    if (target_epsilon is None) == (noise_multiplier is None):
        raise TrainingConfigError("give exactly one of target epsilon and noise multiplier")
    if noise_multiplier is None:
        assert target_epsilon is not None
        noise_multiplier = _calibrated_noise(
            target_epsilon, sample_rate, steps * total_rounds, delta, calibration_cache
        )
    if not noise_multiplier > 0:
        raise TrainingConfigError(
            "the noise multiplier must be positive: DP-SGD without noise is not private"
        )
    return DpRoundPlan(
        batch_size=batch_size,
        local_epochs=local_epochs,
        learning_rate=learning_rate,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        proximal_mu=proximal_mu,
    )


def _calibrated_noise(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    cache: CalibrationCache | None,
) -> float:
    if not target_epsilon > 0:
        raise TrainingConfigError(f"target epsilon must be positive, got {target_epsilon}")
    try:
        if cache is not None:
            return cache.noise_multiplier(target_epsilon, sample_rate, steps, delta)
        return _calibrated_in_memory(target_epsilon, sample_rate, steps, delta)
    except ValueError as error:  # e.g. a target no finite noise reaches
        raise TrainingConfigError(str(error)) from None


@lru_cache(maxsize=64)
def _calibrated_in_memory(
    target_epsilon: float, sample_rate: float, steps: int, delta: float
) -> float:
    return noise_multiplier_for_epsilon(target_epsilon, sample_rate, steps, delta)


def train_dp_opacus(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    plan: DpRoundPlan,
    seed: int,
) -> tuple[float, int]:
    """Run ``plan`` with Opacus's ``make_private`` (Poisson sampling, per-sample clipping,
    Gaussian noise): the reference DP engine. Returns the mean training loss per sampled
    example and the number of noisy steps taken. Updates ``model`` in place."""
    from opacus import PrivacyEngine  # imported here: ~1.3 s that the fast engine never needs

    torch.manual_seed(seed)
    model.train()  # Opacus refuses a module in eval mode
    global_weights = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=plan.batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=plan.learning_rate, momentum=0.9)
    private_model, private_optimizer, private_loader = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.clip_norm,
        poisson_sampling=True,
    )
    criterion = nn.BCEWithLogitsLoss()
    loss_sum, examples, steps = 0.0, 0, 0
    private_model.train()
    for _ in range(plan.local_epochs):
        for features, labels in private_loader:
            private_optimizer.zero_grad()
            # An empty Poisson batch still takes its noise-only step (Opacus supports it;
            # its mean loss is NaN but has no per-sample gradients): the accountant counted it.
            loss = criterion(private_model(features), labels)
            loss.backward()
            private_optimizer.step()
            apply_proximal_step(model, global_weights, plan.learning_rate, plan.proximal_mu)
            steps += 1
            if len(labels):
                loss_sum += float(loss.detach()) * len(labels)
                examples += len(labels)
    private_model.remove_hooks()
    return (loss_sum / examples if examples else float("nan")), steps


def apply_proximal_step(
    model: nn.Module, global_weights: list[torch.Tensor], learning_rate: float, mu: float
) -> None:
    """FedProx's pull towards the global model, applied after the private step.

    The proximal gradient ``mu * (w - w_global)`` depends on no record, so adding it after
    clipping and noising is post-processing and costs no privacy; inside the loss it would be
    clipped per sample together with the data gradients, which is not what FedProx means.
    """
    if mu <= 0:
        return
    with torch.no_grad():
        for weight, global_weight in zip(model.parameters(), global_weights, strict=True):
            weight.sub_(learning_rate * mu * (weight - global_weight))


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    auc: float | None  # None when the split holds one class only
    num_examples: int


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Evaluation:
    """Loss, accuracy at 0.5 and ROC AUC of ``model`` on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y)))
    scores = torch.sigmoid(logits).numpy()
    return Evaluation(
        loss=loss,
        accuracy=float(np.mean((scores >= 0.5) == (y >= 0.5))),
        auc=auc_or_none(y, scores),
        num_examples=len(y),
    )


def auc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score  # ~0.8 s that training messages never need

    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else None
