"""The clinic's training step: DP-SGD with Opacus, plus the non-private trainer for baselines.

The privacy cost of a round is fixed before any gradient is computed, from public inputs
only (the clinic's public size N, see ``oralfed.client.public_size``): Poisson sampling at
``q = batch_size / N``, ``steps = epochs * ceil(1 / q)`` and the noise multiplier. That
triple is what the ledger charges; training then spends it.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

from oralfed.client.secure_random import DpRandom
from oralfed.privacy.accountants import DEFAULT_ACCOUNTANT
from oralfed.privacy.calibration import CalibrationCache, calibrated_noise_multiplier
from oralfed.privacy.events import DpSgdEvent, PrivacyEvent
from oralfed.schemas.errors import ExitCode, OralFedError

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer


class TrainingConfigError(OralFedError, ValueError):
    """A training request that cannot be run as asked (the message says which setting)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class DpRoundPlan:
    """What one clinic will run in one round; ``event`` is what the ledger charges.

    Every field is a function of public inputs (the coordinator's configuration and the
    clinic's public size), never of the private data: q, the steps and the normaliser
    ``expected_batch_size`` are the same for any two neighbouring data sets.
    """

    batch_size: int
    local_epochs: int
    learning_rate: float
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    expected_batch_size: float
    proximal_mu: float = 0.0

    @property
    def event(self) -> DpSgdEvent:
        return DpSgdEvent(self.noise_multiplier, self.sample_rate, self.steps)


def plan_dp_round(
    *,
    public_size: int,
    batch_size: int,
    local_epochs: int,
    learning_rate: float,
    clip_norm: float,
    total_rounds: int,
    delta: float,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    proximal_mu: float = 0.0,
    accountant: str = DEFAULT_ACCOUNTANT,
    other_events: Sequence[PrivacyEvent] = (),
    calibration_cache: CalibrationCache | None = None,
) -> DpRoundPlan:
    """Fix a round's mechanism from public inputs only.

    q = batch size / ``public_size`` (at most 1), ``steps`` = epochs x ceil(1 / q), and the
    clipped sum is divided by the expected batch size q x ``public_size``. With
    ``target_epsilon`` the noise is calibrated so that ``total_rounds`` such rounds composed
    with ``other_events`` (the run's evaluations, a size estimate) spend at most that ε at
    ``delta`` (through ``calibration_cache`` when given: a deployed node calibrates once).
    """
    if public_size < 1:
        raise TrainingConfigError("the public training-set size must be at least 1")
    if batch_size < 1 or local_epochs < 1 or total_rounds < 1:
        raise TrainingConfigError("batch size, local epochs and rounds must be at least 1")
    if not (clip_norm > 0 and learning_rate > 0):
        raise TrainingConfigError("clip norm and learning rate must be positive")
    sample_rate = min(1.0, batch_size / public_size)
    steps = local_epochs * math.ceil(1.0 / sample_rate)
    if (target_epsilon is None) == (noise_multiplier is None):
        raise TrainingConfigError("give exactly one of target epsilon and noise multiplier")
    if noise_multiplier is None:
        assert target_epsilon is not None
        noise_multiplier = _calibrated_noise(
            target_epsilon,
            sample_rate,
            steps * total_rounds,
            delta,
            accountant,
            tuple(other_events),
            calibration_cache,
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
        expected_batch_size=sample_rate * public_size,
        proximal_mu=proximal_mu,
    )


def _calibrated_noise(
    target_epsilon: float,
    sample_rate: float,
    run_steps: int,
    delta: float,
    accountant: str,
    other_events: tuple[PrivacyEvent, ...],
    cache: CalibrationCache | None,
) -> float:
    """σ for the whole run's ``run_steps`` DP-SGD steps composed with ``other_events``."""
    if not target_epsilon > 0:
        raise TrainingConfigError(f"target epsilon must be positive, got {target_epsilon}")
    try:
        if cache is not None:
            return cache.noise_multiplier(
                target_epsilon, sample_rate, run_steps, delta, accountant, other_events
            )
        return calibrated_noise_multiplier(
            target_epsilon, sample_rate, run_steps, delta, accountant, other_events
        )
    except ValueError as error:  # e.g. a target no finite noise reaches
        raise TrainingConfigError(str(error)) from None


def train_dp_opacus(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    plan: DpRoundPlan,
    seed: int | None = None,
) -> tuple[float, int]:
    """Run ``plan`` with Opacus's ``make_private`` (per-sample clipping, Gaussian noise): the
    reference DP engine. Returns the mean training loss per sampled example and the number
    of noisy steps taken. Updates ``model`` in place.

    Opacus's mechanism is kept and its randomness replaced: the loader yields Poisson batches
    at the plan's ``q`` and the optimizer adds noise of std ``σ·C`` to the clipped sum before
    dividing by the plan's expected batch size, but batches and noise come from
    ``DpRandom.from_seed(seed)`` (tests and benchmarks) or :meth:`DpRandom.secret`, in the
    fast engine's order, instead of torch generators that keep 32 bits of a seed (Opacus's
    ``secure_mode`` needs ``torchcsprng``, which has no build for this torch)."""
    from opacus import PrivacyEngine  # imported here: ~1.3 s that the fast engine never needs
    from opacus.data_loader import wrap_collate_with_empty

    rng = DpRandom.secret() if seed is None else DpRandom.from_seed(seed)
    model.train()  # Opacus refuses a module in eval mode
    global_weights = [p.detach().clone() for p in model.parameters()]
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    batches = rng.poisson_batches(len(dataset), plan.sample_rate, plan.steps)
    loader = DataLoader(
        dataset,
        batch_sampler=_EpochsOfBatches(batches, plan.steps // plan.local_epochs),
        # As Opacus's DPDataLoader does: an empty Poisson batch collates to zero-row tensors.
        collate_fn=wrap_collate_with_empty(
            collate_fn=default_collate,
            sample_empty_shapes=[(0, *tensor.shape) for tensor in dataset[0]],
            dtypes=[tensor.dtype for tensor in dataset[0]],
        ),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=plan.learning_rate, momentum=0.9)
    with warnings.catch_warnings():  # "Secure RNG turned off": its generators are unused here
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        privacy_engine = PrivacyEngine()
    private_model, private_optimizer, private_loader = privacy_engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.clip_norm,
        poisson_sampling=False,  # the loader's batches are Poisson already: keep them
    )
    private_model.forbid_grad_accumulation()  # as make_private does for Poisson sampling
    # make_private's divisor is int(n / len(loader)), a function of the private n: use the plan's.
    private_optimizer.expected_batch_size = plan.expected_batch_size
    _draw_noise_from(rng, private_optimizer)
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


class _EpochsOfBatches:
    """The Opacus engine's batch sampler: one round's Poisson batches, ``steps_per_epoch`` of
    them per pass of the loader (its length, which is all ``make_private`` reads of it).

    One iterator for the whole round, rather than one per epoch, draws the batches at the
    same points of the random stream as the fast engine does.
    """

    def __init__(self, batches: Iterator[torch.Tensor], steps_per_epoch: int) -> None:
        self._batches = batches
        self._steps_per_epoch = steps_per_epoch

    def __len__(self) -> int:
        return self._steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for batch in itertools.islice(self._batches, self._steps_per_epoch):
            yield batch.tolist()


def _draw_noise_from(rng: DpRandom, optimizer: DPOptimizer) -> None:
    """Make ``optimizer.add_noise`` draw from ``rng``: Opacus's method line for line (each
    parameter's clipped sum plus noise of std ``σ·C``, in ``optimizer.params`` order) except
    for the source of the noise, which in Opacus is ``torch.normal`` on a torch generator."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    std = optimizer.noise_multiplier * optimizer.max_grad_norm

    def add_noise() -> None:
        for parameter in optimizer.params:
            _check_processed_flag(parameter.summed_grad)
            noise = rng.normal_like(parameter.summed_grad, std)
            parameter.grad = (parameter.summed_grad + noise).view_as(parameter)
            _mark_as_processed(parameter.summed_grad)

    optimizer.add_noise = add_noise


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
