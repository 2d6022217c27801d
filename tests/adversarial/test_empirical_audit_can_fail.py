"""An empirical audit that can fail: planted privacy bugs must be reported as violations.

Each buggy engine trains with less privacy than the plan it was given, while the ledger
(and the audit's accounted ε) still charges the plan: the noise switched off, a tenth of
the noise, or no clipping. At the platform's defaults (target ε = 3, the default round plan
and audit size) the same audit must stay at or below the accounted ε, with a verdict of
"consistent": it could have failed and did not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from oralfed.client.data import ClinicData, load_clinic_data
from oralfed.client.dp_engines import DpEngine, get_dp_engine
from oralfed.client.empirical_audit import (
    AuditVerdict,
    EmpiricalAuditResult,
    run_empirical_audit,
)
from oralfed.client.empirical_audit_run import DEFAULT_CANARIES, DEFAULT_INCLUDED_GUESSES
from oralfed.client.training import DpRoundPlan, plan_dp_round
from oralfed.schemas.settings import DpEngineName, FederationSettings
from oralfed.schemas.synthetic import write_federation

DELTA = 1e-5
PLATFORM = FederationSettings()


class BuggyEngine(DpEngine):
    """A platform engine run on a doctored plan: what a privacy bug in it would do."""

    def __init__(self, engine: str, doctor: Callable[[DpRoundPlan], DpRoundPlan]) -> None:
        self._engine = get_dp_engine(engine)
        self._doctor = doctor
        self.name = self._engine.name  # type: ignore[misc]

    def _run(
        self, model: nn.Module, x: np.ndarray, y: np.ndarray, plan: DpRoundPlan, seed: int | None
    ) -> tuple[float, int]:
        trained = self._engine.train(model, x, y, self._doctor(plan), seed=seed)
        return trained.mean_loss, trained.steps


def noise_times(factor: float) -> Callable[[DpRoundPlan], DpRoundPlan]:
    return lambda plan: dataclasses.replace(plan, noise_multiplier=plan.noise_multiplier * factor)


def no_clipping(plan: DpRoundPlan) -> DpRoundPlan:
    """Clip at 1000 C and keep the noise's std σ·C: clipping as good as absent."""
    return dataclasses.replace(
        plan, clip_norm=plan.clip_norm * 1000, noise_multiplier=plan.noise_multiplier / 1000
    )


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> ClinicData:
    (path,) = write_federation(tmp_path_factory.mktemp("clinic"), n_clinics=1, seed=3)
    return load_clinic_data("clinic-01", Path(path))


def platform_plan(public_size: int) -> DpRoundPlan:
    """The round a clinic runs at the platform's defaults, calibrated to its target ε."""
    return plan_dp_round(
        public_size=public_size,
        batch_size=PLATFORM.batch_size,
        local_epochs=PLATFORM.local_epochs,
        learning_rate=PLATFORM.learning_rate,
        clip_norm=PLATFORM.clip_norm,
        total_rounds=1,
        delta=DELTA,
        target_epsilon=PLATFORM.target_epsilon,
    )


def audit(clinic: ClinicData, engine: str | DpEngine) -> EmpiricalAuditResult:
    """The audit at its defaults (1000 canaries of each kind, 200 guesses per score)."""
    return run_empirical_audit(
        clinic.x_train,
        clinic.y_train,
        platform_plan,
        canaries=DEFAULT_CANARIES,
        included_guesses=DEFAULT_INCLUDED_GUESSES,
        delta=DELTA,
        seed=0,
        engine=engine,
    )


@pytest.mark.parametrize("engine", list(DpEngineName))
def test_noise_switched_off_is_a_violation(clinic: ClinicData, engine: str) -> None:
    result = audit(clinic, BuggyEngine(engine, noise_times(0.0)))
    assert result.epsilon_accounted == pytest.approx(PLATFORM.target_epsilon, abs=0.02)
    assert result.correct_white_box == DEFAULT_INCLUDED_GUESSES  # every guess right
    assert result.epsilon_lower_bound > 3.9 > result.epsilon_accounted
    assert result.verdict is AuditVerdict.VIOLATION and not result.consistent


def test_a_tenth_of_the_noise_is_a_violation(clinic: ClinicData) -> None:
    result = audit(clinic, BuggyEngine(DpEngineName.FAST, noise_times(0.1)))
    assert result.correct_needed is not None
    assert result.correct_white_box >= result.correct_needed
    assert result.epsilon_lower_bound > result.epsilon_accounted
    assert result.verdict is AuditVerdict.VIOLATION


def test_missing_clipping_is_a_violation(clinic: ClinicData) -> None:
    result = audit(clinic, BuggyEngine(DpEngineName.FAST, no_clipping))
    assert result.epsilon_lower_bound > result.epsilon_accounted
    assert result.verdict is AuditVerdict.VIOLATION


@pytest.mark.parametrize("engine", list(DpEngineName))
def test_the_platform_defaults_stay_below_the_accounted_epsilon(
    clinic: ClinicData, engine: str
) -> None:
    result = audit(clinic, engine)
    assert result.engine == engine
    assert result.epsilon_accounted == pytest.approx(PLATFORM.target_epsilon, abs=0.02)
    assert result.epsilon_lower_bound <= result.epsilon_accounted
    assert result.epsilon_lower_bound < 1.0  # far below: the final model hides single steps
    assert result.max_provable_epsilon > result.epsilon_accounted
    assert result.verdict is AuditVerdict.CONSISTENT and result.consistent
