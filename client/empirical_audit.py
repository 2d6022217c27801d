"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

The accountant's ε is an upper bound that holds if the implementation is right. This audit
measures from the other side: it plants ``m`` canary records, includes each independently
with probability ½ (seeded), trains exactly as a clinic trains (:func:`plan_dp_round` and
the platform's DP engine), scores every canary, guesses "included" for the ``k``
highest scores and "excluded" for the ``k`` lowest, and turns the number of correct guesses
into a lower bound on ε that holds with the chosen confidence. A lower bound above the
accounted ε would prove a privacy bug; a lower bound clearly above 0 in a deliberately
broken setting shows that the audit can see leakage at all.

Scores: black-box, how much the canary's loss fell between the initial model (public: the
coordinator sent it) and the trained one, which removes the luck of the random start;
white-box,
the alignment of the whole training update with the canary's own gradient at the initial
weights (cheap for a small MLP: one gradient per canary). Two scores are two tests, so each
bound is computed at half the error probability (Bonferroni) and the larger one reported.

The lower bound at δ > 0 is the paper's Algorithm (Theorem 5.2's p-value, inverted by
bisection): under (ε, δ)-DP, the number of correct guesses among ``r`` is at most a
Binomial(r, e^ε / (1 + e^ε)) tail plus a δ term that grows with ``m``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from oralfed.client.dp_engines import get_dp_engine
from oralfed.client.training import DpRoundPlan, TrainingConfigError
from oralfed.privacy.accountants import DEFAULT_ACCOUNTANT, get_accountant, validate_delta
from oralfed.schemas.model import build_model
from oralfed.schemas.settings import DEFAULT_HIDDEN_SIZES, DpEngineName

# Canaries sit this many feature standard deviations from the data's mean: far enough that
# the model's output there depends mostly on whether the canary was trained on.
CANARY_DISTANCE = 3.0
# Bisection steps for the ε lower bound; 40 halvings pin it far below reporting precision.
_BISECTION_STEPS = 40


@dataclass(frozen=True)
class EmpiricalAuditResult:
    """What the audit found, beside what the accountant promised for the same training."""

    canaries: int
    canaries_included: int
    guesses: int  # r: k "included" + k "excluded" guesses per score
    correct_black_box: int
    correct_white_box: int
    epsilon_lower_black_box: float
    epsilon_lower_white_box: float
    epsilon_lower_bound: float  # the larger of the two, each at (1 - confidence) / 2
    confidence: float
    epsilon_accounted: float
    delta: float
    accountant: str
    engine: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    train_records: int  # real records, canaries excluded

    @property
    def consistent(self) -> bool:
        """True when the measured lower bound does not exceed the accountant's upper bound."""
        return self.epsilon_lower_bound <= self.epsilon_accounted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"consistent": self.consistent}


def p_value_dp_audit(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` (over ``m`` randomised
    canaries) if the training were (ε, δ)-DP: the paper's bound, a Binomial tail plus a
    δ term (Steinke et al. 2023, Algorithm 2 / Theorem 5.2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    cumulative = 0.0  # P[v > Binomial(r, q) >= v - i]
    for i in range(1, v + 1):
        cumulative += float(stats.binom.pmf(v - i, r, q))
        alpha = max(alpha, cumulative / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε that ``v`` correct guesses out of ``r`` rule out at ``confidence``.

    0 when the guesses are no better than chance could explain.
    """
    validate_delta(delta)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    p = 1.0 - confidence
    if p_value_dp_audit(m, r, v, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0  # invariant: p_value(low) < p <= p_value(high)
    while p_value_dp_audit(m, r, v, high, delta) < p:
        low, high = high, 2 * high
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if p_value_dp_audit(m, r, v, middle, delta) < p:
            low = middle
        else:
            high = middle
    return low


def make_canaries(
    x: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` out-of-distribution records with random labels.

    Each canary is the data's mean pushed :data:`CANARY_DISTANCE` standard deviations along
    a random sign pattern: nothing in the real data predicts its (random) label, so only
    training on it can make the model fit it.
    """
    centre, spread = x.mean(axis=0), x.std(axis=0) + 1e-3
    signs = rng.choice(np.array([-1.0, 1.0]), size=(count, x.shape[1]))
    features = (centre + CANARY_DISTANCE * spread * signs).astype(np.float32)
    labels = rng.integers(0, 2, size=count).astype(np.float32)
    return features, labels


def membership_guesses(scores: np.ndarray, k: int) -> np.ndarray:
    """+1 ("included") for the ``k`` highest scores, -1 for the ``k`` lowest, 0 otherwise."""
    if not 0 < 2 * k <= len(scores):
        raise ValueError(f"need 1 <= 2 k ({2 * k}) <= canaries ({len(scores)})")
    order = np.argsort(scores, kind="stable")
    guesses = np.zeros(len(scores), dtype=np.int8)
    guesses[order[-k:]] = 1
    guesses[order[:k]] = -1
    return guesses


def count_correct(guesses: np.ndarray, included: np.ndarray) -> int:
    truth = np.where(included, 1, -1)
    return int(np.sum((guesses != 0) & (guesses == truth)))


def loss_scores(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Minus each canary's loss under ``model`` (members fit better after training)."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        losses = nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(y), reduction="none"
        )
    return -losses.numpy()


def gradient_alignment_scores(
    initial: nn.Module, trained: nn.Module, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """White-box score: how far training moved the weights along each canary's own descent
    direction (its unit gradient at the initial weights, as DP-SGD would clip it)."""
    update = torch.cat(
        [(after - before).detach().flatten() for before, after in _paired(initial, trained)]
    )
    scores = np.empty(len(y))
    initial.eval()
    for index in range(len(y)):
        initial.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(
            initial(torch.from_numpy(x[index : index + 1])), torch.from_numpy(y[index : index + 1])
        )
        loss.backward()
        gradient = torch.cat([p.grad.flatten() for p in initial.parameters() if p.grad is not None])
        scores[index] = float(-(update @ gradient) / (gradient.norm() + 1e-12))
    return scores


def _paired(initial: nn.Module, trained: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(initial.parameters(), trained.parameters(), strict=True))


def run_empirical_audit(
    x: np.ndarray,
    y: np.ndarray,
    plan_for: Callable[[int], DpRoundPlan],
    *,
    canaries: int,
    guesses_per_side: int,
    delta: float,
    seed: int,
    confidence: float = 0.95,
    accountant: str = DEFAULT_ACCOUNTANT,
    engine: str = DpEngineName.FAST,
    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES,
) -> EmpiricalAuditResult:
    """Plant canaries in ``(x, y)``, train once as the platform does, and bound ε from below.

    ``plan_for(n_records)`` returns the :class:`DpRoundPlan` a clinic would run on that many
    records (callers build it with :func:`client.training.plan_dp_round`), so the audit
    trains under exactly the sampling rate, steps and noise the ledger would charge for,
    with the DP engine clinics run (``engine``, see :mod:`client.dp_engines`).
    """
    validate_delta(delta)
    trainer = get_dp_engine(engine)
    if canaries < 2:
        raise TrainingConfigError(f"--canaries must be at least 2, got {canaries}")
    if not 0 < 2 * guesses_per_side <= canaries:
        raise TrainingConfigError(
            f"--guesses must be between 1 and half the canaries ({canaries // 2}), "
            f"got {guesses_per_side}"
        )
    rng = np.random.default_rng(seed)
    canary_x, canary_y = make_canaries(x, canaries, rng)
    included = rng.random(canaries) < 0.5
    train_x = np.concatenate([x, canary_x[included]])
    train_y = np.concatenate([y, canary_y[included]])
    plan = plan_for(len(train_y))
    initial = build_model(hidden_sizes, seed=seed)
    trained = build_model(hidden_sizes)
    trained.load_state_dict(initial.state_dict())
    trainer.train(trained, train_x, train_y, plan, seed=seed)

    guesses = 2 * guesses_per_side
    correct = {
        "black": count_correct(
            membership_guesses(
                loss_scores(trained, canary_x, canary_y) - loss_scores(initial, canary_x, canary_y),
                guesses_per_side,
            ),
            included,
        ),
        "white": count_correct(
            membership_guesses(
                gradient_alignment_scores(initial, trained, canary_x, canary_y), guesses_per_side
            ),
            included,
        ),
    }
    per_test_confidence = 1 - (1 - confidence) / 2  # two scores, Bonferroni
    bounds = {
        name: epsilon_lower_bound(canaries, guesses, count, delta, per_test_confidence)
        for name, count in correct.items()
    }
    return EmpiricalAuditResult(
        canaries=canaries,
        canaries_included=int(included.sum()),
        guesses=guesses,
        correct_black_box=correct["black"],
        correct_white_box=correct["white"],
        epsilon_lower_black_box=bounds["black"],
        epsilon_lower_white_box=bounds["white"],
        epsilon_lower_bound=max(bounds.values()),
        confidence=confidence,
        epsilon_accounted=get_accountant(accountant).epsilon([plan.event], delta),
        delta=delta,
        accountant=accountant,
        engine=engine,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
        train_records=len(y),
    )
