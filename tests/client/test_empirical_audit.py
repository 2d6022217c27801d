"""The one-run empirical audit: the bound itself, a broken setting it must catch, and the
platform's defaults, whose measured lower bound must stay below the accounted ε."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from oralfed.client.data import ClinicData, load_clinic_data
from oralfed.client.empirical_audit import (
    count_correct,
    epsilon_lower_bound,
    membership_guesses,
    p_value_dp_audit,
    run_empirical_audit,
)
from oralfed.client.training import DpRoundPlan, TrainingConfigError, plan_dp_round
from oralfed.schemas.settings import DpEngineName, FederationSettings
from oralfed.schemas.synthetic import write_federation

DELTA = 1e-5


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> ClinicData:
    (path,) = write_federation(tmp_path_factory.mktemp("clinic"), n_clinics=1, seed=3)
    return load_clinic_data("clinic-01", Path(path))


def planner(**settings: float) -> Callable[[int], DpRoundPlan]:
    def plan_for(records: int) -> DpRoundPlan:
        return plan_dp_round(n_train=records, total_rounds=1, delta=DELTA, **settings)  # type: ignore[arg-type]

    return plan_for


def test_pure_dp_bound_matches_the_binomial_closed_form() -> None:
    # With δ = 0 and every guess right, P[Bin(r, p) >= r] = p^r = 0.05 gives the bound.
    r = 20
    p = 0.05 ** (1 / r)
    expected = math.log(p / (1 - p))
    assert epsilon_lower_bound(100, r, r, delta=1e-300) == pytest.approx(expected, rel=1e-6)
    assert p_value_dp_audit(100, r, r, expected, 0.0) == pytest.approx(0.05)


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


def test_guesses_take_the_extremes_and_abstain_in_between() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.4])
    guesses = membership_guesses(scores, 2)
    assert guesses.tolist() == [1, -1, 0, 1, -1, 0]
    included = np.array([True, False, True, False, False, True])
    assert count_correct(guesses, included) == 3
    with pytest.raises(ValueError):
        membership_guesses(scores, 4)


def test_broken_setting_is_caught(clinic: ClinicData) -> None:
    """Noise 0.1 (the least an event may carry) and 150 epochs: canaries are memorised, and
    the audit must say so. The fast engine keeps this to about a second."""
    result = run_empirical_audit(
        clinic.x_train[:200],
        clinic.y_train[:200],
        planner(
            batch_size=64, local_epochs=150, learning_rate=0.1, clip_norm=5.0, noise_multiplier=0.1
        ),
        canaries=200,
        guesses_per_side=20,
        delta=DELTA,
        seed=1,
        accountant="rdp",  # PLD takes minutes to confirm what is obvious at σ = 0.1
        engine="fast",
    )
    assert result.correct_black_box >= 30  # of 40 guesses
    assert result.epsilon_lower_bound > 0.5
    assert result.consistent  # the accountant's bound (thousands) is still an upper bound


@pytest.mark.parametrize("engine", list(DpEngineName))
def test_platform_defaults_stay_below_the_accounted_epsilon(
    clinic: ClinicData, engine: str
) -> None:
    defaults = FederationSettings()
    assert defaults.target_epsilon is not None
    result = run_empirical_audit(
        clinic.x_train[:400],
        clinic.y_train[:400],
        planner(
            batch_size=defaults.batch_size,
            local_epochs=defaults.local_epochs,
            learning_rate=defaults.learning_rate,
            clip_norm=defaults.clip_norm,
            target_epsilon=defaults.target_epsilon,
        ),
        canaries=100,
        guesses_per_side=10,
        delta=DELTA,
        seed=1,
        engine=engine,
    )
    assert result.engine == engine
    assert result.epsilon_accounted == pytest.approx(defaults.target_epsilon, abs=0.02)
    assert result.epsilon_lower_bound < result.epsilon_accounted
    assert result.consistent
    assert result.train_records == 400 and 0 < result.canaries_included < 100


def test_bad_audit_settings_are_refused(clinic: ClinicData) -> None:
    plan_for = planner(
        batch_size=64, local_epochs=1, learning_rate=0.1, clip_norm=1.0, noise_multiplier=1.0
    )
    with pytest.raises(TrainingConfigError, match="--guesses"):
        run_empirical_audit(
            clinic.x_train,
            clinic.y_train,
            plan_for,
            canaries=10,
            guesses_per_side=6,
            delta=DELTA,
            seed=0,
        )
    with pytest.raises(ValueError, match="delta"):
        run_empirical_audit(
            clinic.x_train,
            clinic.y_train,
            plan_for,
            canaries=10,
            guesses_per_side=2,
            delta=1.5,
            seed=0,
        )
