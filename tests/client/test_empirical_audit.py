"""The one-run empirical audit's parts: the bound and its inverse, what a perfect attack could
prove, the verdict, the guesses, and the Dirac canaries' gradients. Whether the whole audit
fails a broken engine and passes the platform's is tests/adversarial/
test_empirical_audit_can_fail.py."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from oralfed.client.data import ClinicData, load_clinic_data
from oralfed.client.empirical_audit import (
    DIRAC_GRADIENT_NORM,
    AuditVerdict,
    DiracCanaries,
    correct_guesses_needed,
    count_correct,
    epsilon_lower_bound,
    max_provable_epsilon,
    membership_guesses,
    p_value_dp_audit,
    run_empirical_audit,
)
from oralfed.client.empirical_audit_run import (
    DEFAULT_CANARIES,
    DEFAULT_CONFIDENCE,
    DEFAULT_INCLUDED_GUESSES,
)
from oralfed.client.training import DpRoundPlan, TrainingConfigError, plan_dp_round
from oralfed.schemas.model import build_model
from oralfed.schemas.settings import DEFAULT_TARGET_EPSILON
from oralfed.schemas.synthetic import write_federation

DELTA = 1e-5
PER_SCORE = 1 - (1 - DEFAULT_CONFIDENCE) / 2  # Bonferroni over the two scores


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> ClinicData:
    (path,) = write_federation(tmp_path_factory.mktemp("clinic"), n_clinics=1, seed=3)
    return load_clinic_data("clinic-01", Path(path))


def planner(**settings: float) -> Callable[[int], DpRoundPlan]:
    def plan_for(public_size: int) -> DpRoundPlan:
        return plan_dp_round(
            public_size=public_size,
            total_rounds=1,
            delta=DELTA,
            accountant="rdp",
            **settings,  # type: ignore[arg-type]
        )

    return plan_for


def paper_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Steinke et al.'s reference code, loop for loop, to check the vectorised version."""
    q = 1 / (1 + math.exp(-epsilon))
    beta = stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += stats.binom.pmf(v - i, r, q)
        alpha = max(alpha, total / i)
    return float(min(beta + alpha * delta * 2 * m, 1.0))


def test_pure_dp_bound_matches_the_binomial_closed_form() -> None:
    # With δ = 0 and every guess right, P[Bin(r, p) >= r] = p^r = 0.05 gives the bound.
    r = 20
    p = 0.05 ** (1 / r)
    expected = math.log(p / (1 - p))
    assert epsilon_lower_bound(100, r, r, delta=1e-300) == pytest.approx(expected, rel=1e-6)
    assert p_value_dp_audit(100, r, r, expected, 0.0) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("m", "r", "v", "epsilon", "delta"),
    [(1000, 200, 200, 3.0, 1e-5), (1000, 200, 150, 1.0, 1e-3), (50, 10, 0, 0.5, 0.1)],
)
def test_p_value_is_the_papers(m: int, r: int, v: int, epsilon: float, delta: float) -> None:
    expected = paper_p_value(m, r, v, epsilon, delta)
    assert p_value_dp_audit(m, r, v, epsilon, delta) == pytest.approx(expected, rel=1e-9)


def test_bound_is_zero_for_chance_and_grows_with_correct_guesses() -> None:
    assert epsilon_lower_bound(100, 20, 10, DELTA) == 0.0
    bounds = [epsilon_lower_bound(1000, 100, v, DELTA) for v in (70, 80, 90, 100)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    # δ makes the bound weaker, and more so with more randomised canaries.
    assert epsilon_lower_bound(10**5, 100, 90, 1e-3) < epsilon_lower_bound(100, 100, 90, 1e-3)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_delta_outside_zero_one_is_refused(delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound(100, 20, 15, delta)
    with pytest.raises(ValueError, match="delta"):
        correct_guesses_needed(100, 20, 1.0, delta)


def test_the_defaults_could_prove_more_than_the_platform_charges() -> None:
    """A perfect attack at the defaults proves ε ≥ 3.9 > 3; the old defaults (500 canaries,
    25 guesses per side) could prove at most 2.55, so they could never fail."""
    best = max_provable_epsilon(DEFAULT_CANARIES, DEFAULT_INCLUDED_GUESSES, DELTA, PER_SCORE)
    assert best == pytest.approx(3.946, abs=1e-3) and best > DEFAULT_TARGET_EPSILON
    assert max_provable_epsilon(500, 50, DELTA, PER_SCORE) == pytest.approx(2.55, abs=0.01)


def test_correct_guesses_needed_is_where_the_bound_crosses_epsilon() -> None:
    needed = correct_guesses_needed(1000, 200, 3.0, DELTA, PER_SCORE)
    assert needed == 197
    assert epsilon_lower_bound(1000, 200, needed, DELTA, PER_SCORE) > 3.0
    assert epsilon_lower_bound(1000, 200, needed - 1, DELTA, PER_SCORE) <= 3.0
    assert correct_guesses_needed(500, 50, 3.0, DELTA, PER_SCORE) is None
    assert correct_guesses_needed(100, 20, 0.0, DELTA) == 15  # chance is 10


def test_guesses_take_the_extremes_and_abstain_in_between() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.4])
    guesses = membership_guesses(scores, 2, 2)
    assert guesses.tolist() == [1, -1, 0, 1, -1, 0]
    included = np.array([True, False, True, False, False, True])
    assert count_correct(guesses, included) == 3
    assert membership_guesses(scores, 3).tolist() == [1, 0, 1, 1, 0, 0]
    assert membership_guesses(scores, 0, 1).tolist() == [0, -1, 0, 0, 0, 0]
    for included_guesses, excluded_guesses in ((4, 3), (0, 0), (-1, 2)):
        with pytest.raises(ValueError):
            membership_guesses(scores, included_guesses, excluded_guesses)


def test_a_dirac_canary_moves_only_its_own_weight_by_the_clip_norm() -> None:
    """Per-sample gradients (what DP-SGD clips): a canary's is ``-DIRAC_GRADIENT_NORM·C`` on
    its own weight and zero elsewhere; a real record's is the bare model's and zero on the
    canary weights."""
    clip_norm, features = 0.5, 23
    bare = build_model(seed=0)
    audited = DiracCanaries(build_model(), canaries=4, clip_norm=clip_norm)
    audited.model.load_state_dict(bare.state_dict())
    real = torch.randn(1, features)
    rows = torch.cat([torch.cat([real, torch.zeros(1, 1)], 1), torch.zeros(1, features + 1)])
    rows[1, -1] = 3.0  # canary 2
    label = torch.ones(1)

    def gradients(model: nn.Module, row: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(row), label).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    *model_grads, canary_grad = gradients(audited, rows[1:])
    assert all(torch.count_nonzero(grad) == 0 for grad in model_grads)
    assert canary_grad.tolist() == [[0.0, 0.0, -DIRAC_GRADIENT_NORM * clip_norm, 0.0]]
    *model_grads, canary_grad = gradients(audited, rows[:1])
    for audited_grad, bare_grad in zip(model_grads, gradients(bare, real), strict=True):
        torch.testing.assert_close(audited_grad, bare_grad)
    assert torch.count_nonzero(canary_grad) == 0
    # The gradient never fades: the canary's logit stays 0 however far its weight moved.
    with torch.no_grad():
        audited.canary_weights.weight.fill_(100.0)
    assert gradients(audited, rows[1:])[-1][0, 2] == -DIRAC_GRADIENT_NORM * clip_norm
    assert audited.canary_updates().tolist() == [100.0] * 4


def test_a_strongly_leaking_run_the_accountant_admits_is_inconclusive(
    clinic: ClinicData,
) -> None:
    """σ = 0.1 (the least an event may carry) and 20 epochs on 200 records: both scores see
    the canaries (black-box ones only after many epochs: this checks their score too), but
    the accountant charges ε in the thousands, which no audit of this size can exceed. That
    is "inconclusive", not "consistent"."""
    result = run_empirical_audit(
        clinic.x_train[:200],
        clinic.y_train[:200],
        planner(
            batch_size=64, local_epochs=20, learning_rate=0.1, clip_norm=5.0, noise_multiplier=0.1
        ),
        canaries=100,
        included_guesses=20,
        delta=DELTA,
        seed=1,
        accountant="rdp",  # PLD takes long to confirm what is obvious at σ = 0.1
    )
    assert result.correct_black_box >= 15 and result.epsilon_lower_black_box > 0
    assert result.correct_white_box == 20
    assert result.epsilon_lower_bound == pytest.approx(result.max_provable_epsilon)
    assert result.epsilon_accounted > 100 and result.max_provable_epsilon < 3
    assert result.correct_needed is None
    assert result.verdict is AuditVerdict.INCONCLUSIVE and not result.consistent
    assert result.to_dict()["verdict"] == "inconclusive"


def test_the_verdict_needs_an_audit_that_could_have_failed(clinic: ClinicData) -> None:
    result = run_empirical_audit(
        clinic.x_train[:200],
        clinic.y_train[:200],
        planner(
            batch_size=64, local_epochs=1, learning_rate=0.1, clip_norm=1.0, noise_multiplier=2
        ),
        canaries=20,
        included_guesses=5,
        excluded_guesses=5,
        delta=DELTA,
        seed=0,
        accountant="rdp",
    )
    assert (result.canaries, result.guesses) == (20, 10)
    assert 0 < result.included_black_box < 20 and 0 < result.included_white_box < 20
    assert result.verdict is AuditVerdict.INCONCLUSIVE
    below = dataclasses.replace(result, epsilon_accounted=result.max_provable_epsilon / 2)
    assert below.verdict is AuditVerdict.CONSISTENT and below.consistent
    above = dataclasses.replace(below, epsilon_lower_bound=below.epsilon_accounted + 0.1)
    assert above.verdict is AuditVerdict.VIOLATION and not above.consistent


def test_bad_audit_settings_are_refused(clinic: ClinicData) -> None:
    plan_for = planner(
        batch_size=64, local_epochs=1, learning_rate=0.1, clip_norm=1.0, noise_multiplier=1.0
    )
    for included_guesses, excluded_guesses in ((6, 5), (0, 0), (-1, 3)):
        with pytest.raises(TrainingConfigError, match="guesses"):
            run_empirical_audit(
                clinic.x_train,
                clinic.y_train,
                plan_for,
                canaries=10,
                included_guesses=included_guesses,
                excluded_guesses=excluded_guesses,
                delta=DELTA,
                seed=0,
            )
    with pytest.raises(ValueError, match="delta"):
        run_empirical_audit(
            clinic.x_train,
            clinic.y_train,
            plan_for,
            canaries=10,
            included_guesses=2,
            delta=1.5,
            seed=0,
        )
