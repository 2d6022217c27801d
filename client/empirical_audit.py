"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

The accountant's ε is an upper bound that holds if the implementation is right. This audit
measures from the other side: it plants canaries, includes each independently with
probability ½ (seeded), trains once exactly as a clinic trains (:func:`plan_dp_round` and the
platform's DP engine), scores every canary, guesses "included" for the highest scores (and,
if asked, "excluded" for the lowest), and turns the number of correct guesses into a lower
bound on ε that holds with the chosen confidence. A lower bound above the accounted ε
proves a privacy bug: the verdict is then "violation".

An audit is only worth something if it could fail. With ``r`` guesses, even a perfect attack
proves at most :func:`max_provable_epsilon`; when that is not above the accounted ε the
audit cannot see a violation however badly the training leaks, and its verdict is
"inconclusive", never "consistent". The defaults in :mod:`client.empirical_audit_run`
(1000 canaries of each kind, 200 guesses) are sized so that the platform's ε = 3 can be
exceeded: 200 correct guesses prove ε ≥ 3.9 at δ = 1e-5 and 97.5 %.

Two kinds of canary, ``m`` of each, trained in the same run:

* black-box: out-of-distribution records with random labels, scored by how much their loss
  fell between the initial model (public: the coordinator sent it) and the trained one;
* white-box: "Dirac" canaries (the paper's gradient-space canaries). The audited model gets
  one extra weight per canary that no real record touches; a canary record's clipped
  gradient is ``C`` times the unit vector on its own weight, whatever the model has learnt.
  The score is that weight's change over training, which the released model shows. So the
  engine's sampling, clipping and noise are audited with nothing else in the way: the only
  things that move a canary's weight are its own gradient and the noise.

Why "included" guesses only by default: a canary that Poisson sampling never drew leaves no
trace, and that happens with probability (1 - q)^steps ≈ e^-epochs (13.5 % at the platform's
two epochs). An "excluded" guess is therefore right at most 1 / (1 + e^-epochs) of the time
even with the noise switched off, which is below e^ε / (1 + e^ε) whenever ε > epochs: at
ε = 3, every "excluded" guess would pull the bound down.

Two scores are two tests, so each bound is computed at half the error probability
(Bonferroni) and the larger one reported. The lower bound at δ > 0 is the paper's Algorithm
(Theorem 5.2's p-value, inverted by bisection): under (ε, δ)-DP, the number of correct
guesses among ``r`` is at most a Binomial(r, e^ε / (1 + e^ε)) tail plus a δ term that grows
with ``m``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from oralfed.client.dp_engines import DpEngine, get_dp_engine
from oralfed.client.training import DpRoundPlan, TrainingConfigError
from oralfed.privacy.accountants import DEFAULT_ACCOUNTANT, get_accountant, validate_delta
from oralfed.schemas.model import build_model
from oralfed.schemas.settings import DEFAULT_HIDDEN_SIZES, DpEngineName

__all__ = [
    "DIRAC_GRADIENT_NORM",
    "AuditVerdict",
    "DiracCanaries",
    "EmpiricalAuditResult",
    "correct_guesses_needed",
    "count_correct",
    "epsilon_lower_bound",
    "loss_scores",
    "make_canaries",
    "max_provable_epsilon",
    "membership_guesses",
    "p_value_dp_audit",
    "run_empirical_audit",
]

# Black-box canaries sit this many feature standard deviations from the data's mean: far
# enough that the model's output there depends mostly on whether the canary was trained on.
CANARY_DISTANCE = 3.0
# A Dirac canary's gradient before clipping, in clip norms: clipping must cut it to C, so a
# clipping bug shows as a canary that moves its weight this many times too far.
DIRAC_GRADIENT_NORM = 10.0
# Bisection steps for the ε lower bound; 40 halvings pin it far below reporting precision.
_BISECTION_STEPS = 40


class AuditVerdict(StrEnum):
    """What one audit shows about the accountant's ε."""

    VIOLATION = "violation"  # the measured lower bound exceeds the accounted ε: a bug
    CONSISTENT = "consistent"  # the audit could have exceeded it and did not
    INCONCLUSIVE = "inconclusive"  # too few canaries or guesses to ever exceed it


@dataclass(frozen=True)
class EmpiricalAuditResult:
    """What the audit found, beside what the accountant promised for the same training."""

    canaries: int  # m of each kind, black-box and white-box
    included_black_box: int  # canaries of each kind actually trained on
    included_white_box: int
    included_guesses: int  # per score: "included" for the k highest, "excluded" for the
    excluded_guesses: int  # lowest; r = their sum
    correct_black_box: int
    correct_white_box: int
    correct_needed: int | None  # correct guesses that would exceed ε_accounted (None: none)
    epsilon_lower_black_box: float
    epsilon_lower_white_box: float
    epsilon_lower_bound: float  # the larger of the two, each at (1 - confidence) / 2
    max_provable_epsilon: float  # the bound if every guess were right
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
    def guesses(self) -> int:
        """r: the guesses made per score (the rest abstain)."""
        return self.included_guesses + self.excluded_guesses

    @property
    def verdict(self) -> AuditVerdict:
        if self.epsilon_lower_bound > self.epsilon_accounted:
            return AuditVerdict.VIOLATION
        if self.max_provable_epsilon > self.epsilon_accounted:
            return AuditVerdict.CONSISTENT
        return AuditVerdict.INCONCLUSIVE

    @property
    def consistent(self) -> bool:
        """True only when the audit could have exceeded the accounted ε and did not."""
        return self.verdict is AuditVerdict.CONSISTENT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "guesses": self.guesses,
            "verdict": self.verdict.value,
            "consistent": self.consistent,
        }


def p_value_dp_audit(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` (over ``m`` randomised
    canaries) if the training were (ε, δ)-DP: the paper's bound, a Binomial tail plus a
    δ term (Steinke et al. 2023, Algorithm 2 / Theorem 5.2), vectorised over its loop."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if v == 0:
        return min(beta, 1.0)
    # alpha = max over i = 1..v of P[v > Binomial(r, q) >= v - i] / i
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε that ``v`` correct guesses out of ``r`` rule out at ``confidence``.

    0 when the guesses are no better than chance could explain.
    """
    p = _error_probability(delta, confidence)
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


def max_provable_epsilon(m: int, r: int, delta: float, confidence: float = 0.95) -> float:
    """The lower bound a perfect attack would prove: all ``r`` guesses right. An audit whose
    accounted ε is not below this can never report a violation."""
    return epsilon_lower_bound(m, r, r, delta, confidence)


def correct_guesses_needed(
    m: int, r: int, epsilon: float, delta: float, confidence: float = 0.95
) -> int | None:
    """The fewest correct guesses out of ``r`` that rule out (ε, δ)-DP at ``confidence``,
    i.e. that make the lower bound exceed ``epsilon``; None if not even ``r`` do."""
    p = _error_probability(delta, confidence)
    return next((v for v in range(r + 1) if p_value_dp_audit(m, r, v, epsilon, delta) < p), None)


def _error_probability(delta: float, confidence: float) -> float:
    validate_delta(delta)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return 1.0 - confidence


def make_canaries(
    x: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` out-of-distribution records with random labels (the black-box canaries).

    Each canary is the data's mean pushed :data:`CANARY_DISTANCE` standard deviations along
    a random sign pattern: nothing in the real data predicts its (random) label, so only
    training on it can make the model fit it.
    """
    centre, spread = x.mean(axis=0), x.std(axis=0) + 1e-3
    signs = rng.choice(np.array([-1.0, 1.0]), size=(count, x.shape[1]))
    features = (centre + CANARY_DISTANCE * spread * signs).astype(np.float32)
    labels = rng.integers(0, 2, size=count).astype(np.float32)
    return features, labels


class DiracCanaries(nn.Module):
    """The audited model plus one dedicated weight per white-box canary.

    Training rows carry one extra, last column: 0 for a real record (or a black-box canary),
    ``c + 1`` for white-box canary ``c``. A real row goes through ``model`` and has a zero
    gradient on the canary weights (its one-hot input there is zero); a canary row's output
    is masked out of ``model``, so its whole gradient is ``-DIRAC_GRADIENT_NORM·C`` along its
    own weight, which clipping cuts to norm ``C``. The canary's logit is held at 0 (its
    value is subtracted, its gradient kept), so its loss gradient is -½ at every step and
    never fades as the weight grows: every draw of the canary pushes the same amount.

    Only ``nn.Linear`` holds parameters, so both DP engines train it unchanged.
    """

    def __init__(self, model: nn.Module, canaries: int, clip_norm: float) -> None:
        super().__init__()
        self.model = model
        self.canaries = canaries
        self.canary_weights = nn.Linear(canaries, 1, bias=False)
        nn.init.zeros_(self.canary_weights.weight)  # public start: the update is the weight
        self._scale = 2.0 * DIRAC_GRADIENT_NORM * clip_norm  # |∂loss/∂logit| = ½ at logit 0

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        features, slots = rows[:, :-1], rows[:, -1].long()
        one_hot = nn.functional.one_hot(slots, self.canaries + 1)[:, 1:].to(rows.dtype)
        pushed = self.canary_weights(one_hot * self._scale).squeeze(-1)
        return torch.where(slots > 0, pushed - pushed.detach(), self.model(features))

    def canary_updates(self) -> np.ndarray:
        """White-box scores: how far training moved each canary's weight (from 0)."""
        return self.canary_weights.weight.detach()[0].numpy().copy()


def membership_guesses(scores: np.ndarray, included: int, excluded: int = 0) -> np.ndarray:
    """+1 ("included") for the ``included`` highest scores, -1 for the ``excluded`` lowest,
    0 (abstain) otherwise."""
    if included < 0 or excluded < 0 or not 0 < included + excluded <= len(scores):
        raise ValueError(f"need 1 <= guesses ({included} + {excluded}) <= canaries ({len(scores)})")
    order = np.argsort(scores, kind="stable")
    guesses = np.zeros(len(scores), dtype=np.int8)
    guesses[order[len(scores) - included :]] = 1
    guesses[order[:excluded]] = -1
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


def run_empirical_audit(
    x: np.ndarray,
    y: np.ndarray,
    plan_for: Callable[[int], DpRoundPlan],
    *,
    canaries: int,
    included_guesses: int,
    delta: float,
    seed: int,
    excluded_guesses: int = 0,  # why: see the module docstring
    confidence: float = 0.95,
    accountant: str = DEFAULT_ACCOUNTANT,
    engine: str | DpEngine = DpEngineName.FAST,
    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES,
) -> EmpiricalAuditResult:
    """Plant canaries in ``(x, y)``, train once as the platform does, and bound ε from below.

    ``plan_for(public_size)`` returns the :class:`DpRoundPlan` a clinic would run with that
    public training-set size (callers build it with :func:`client.training.plan_dp_round`);
    it is given the real records plus the canaries expected to be included, so the plan,
    like a clinic's, does not depend on which canaries the coins picked. The audit trains
    under exactly the sampling rate, steps and noise the ledger would charge for, with the
    DP engine clinics run (``engine``: a name from :mod:`client.dp_engines`, or an engine).
    """
    validate_delta(delta)
    trainer = engine if isinstance(engine, DpEngine) else get_dp_engine(engine)
    if canaries < 2:
        raise TrainingConfigError(f"--canaries must be at least 2, got {canaries}")
    if included_guesses < 0 or excluded_guesses < 0:
        raise TrainingConfigError("the numbers of guesses cannot be negative")
    if not 0 < included_guesses + excluded_guesses <= canaries:
        raise TrainingConfigError(
            f"--guesses must be between 1 and the canaries ({canaries}) in all, "
            f"got {included_guesses} + {excluded_guesses}"
        )
    rng = np.random.default_rng(seed)
    canary_x, canary_y = make_canaries(x, canaries, rng)
    in_black_box = rng.random(canaries) < 0.5
    in_white_box = rng.random(canaries) < 0.5
    plan = plan_for(len(y) + canaries)  # half of the 2m canaries are expected in
    rows, labels = _training_rows(
        x, y, canary_x[in_black_box], canary_y[in_black_box], np.flatnonzero(in_white_box)
    )
    initial = build_model(hidden_sizes, seed=seed)
    audited = DiracCanaries(build_model(hidden_sizes), canaries, plan.clip_norm)
    audited.model.load_state_dict(initial.state_dict())
    trainer.train(audited, rows, labels, plan, seed=seed)

    guesses = included_guesses + excluded_guesses
    black_box = loss_scores(audited.model, canary_x, canary_y)
    black_box -= loss_scores(initial, canary_x, canary_y)
    correct = {
        "black": count_correct(
            membership_guesses(black_box, included_guesses, excluded_guesses), in_black_box
        ),
        "white": count_correct(
            membership_guesses(audited.canary_updates(), included_guesses, excluded_guesses),
            in_white_box,
        ),
    }
    per_test_confidence = 1 - (1 - confidence) / 2  # two scores, Bonferroni
    bounds = {
        name: epsilon_lower_bound(canaries, guesses, count, delta, per_test_confidence)
        for name, count in correct.items()
    }
    epsilon_accounted = get_accountant(accountant).epsilon([plan.event], delta)
    return EmpiricalAuditResult(
        canaries=canaries,
        included_black_box=int(in_black_box.sum()),
        included_white_box=int(in_white_box.sum()),
        included_guesses=included_guesses,
        excluded_guesses=excluded_guesses,
        correct_black_box=correct["black"],
        correct_white_box=correct["white"],
        correct_needed=correct_guesses_needed(
            canaries, guesses, epsilon_accounted, delta, per_test_confidence
        ),
        epsilon_lower_black_box=bounds["black"],
        epsilon_lower_white_box=bounds["white"],
        epsilon_lower_bound=max(bounds.values()),
        max_provable_epsilon=max_provable_epsilon(canaries, guesses, delta, per_test_confidence),
        confidence=confidence,
        epsilon_accounted=epsilon_accounted,
        delta=delta,
        accountant=accountant,
        engine=trainer.name,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
        train_records=len(y),
    )


def _training_rows(
    x: np.ndarray,
    y: np.ndarray,
    black_box_x: np.ndarray,
    black_box_y: np.ndarray,
    white_box: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The rows :class:`DiracCanaries` trains on: real records and black-box canaries with
    slot 0, then one row per included white-box canary (zero features, its slot, label 1)."""
    features = np.concatenate([x, black_box_x, np.zeros((len(white_box), x.shape[1]))])
    slots = np.concatenate([np.zeros(len(x) + len(black_box_x)), white_box + 1.0])
    rows = np.column_stack([features, slots]).astype(np.float32)
    labels = np.concatenate([y, black_box_y, np.ones(len(white_box))]).astype(np.float32)
    return rows, labels
