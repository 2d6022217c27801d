"""The empirical audit from plain settings: refused before anything is loaded or trained,
and run on a synthetic clinic planned as a clinic plans one round; at every default it could
fail and does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from oralfed.client.data import ClinicDataError
from oralfed.client.empirical_audit import AuditVerdict
from oralfed.client.empirical_audit_run import (
    DEFAULT_CANARIES,
    DEFAULT_INCLUDED_GUESSES,
    audit_clinic_training,
)
from oralfed.client.training import TrainingConfigError
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.settings import SettingsError

SMALL: dict[str, Any] = {
    "canaries": 20,
    "included_guesses": 5,
    "local_epochs": 1,
    "accountant": "rdp",
}


@pytest.mark.parametrize(
    ("settings", "keys"),
    [
        ({"target_epsilon": 1.0, "noise_multiplier": 1.0}, ("target epsilon", "noise multiplier")),
        ({"delta": 0.0}, ("delta",)),
        ({"delta": 1.0}, ("delta",)),
        ({"accountant": "nope"}, ("accountant",)),
        ({"confidence": 1.5}, ("confidence",)),
    ],
)
def test_bad_settings_are_refused_before_the_data_is_read(
    tmp_path: Path, settings: dict[str, Any], keys: tuple[str, ...]
) -> None:
    with pytest.raises(SettingsError) as refused:
        audit_clinic_training(tmp_path / "missing.csv", **settings)
    assert refused.value.keys == keys and refused.value.exit_code is ExitCode.USAGE
    assert "--" not in str(refused.value)


def test_a_missing_export_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(ClinicDataError, match="no such file") as refused:
        audit_clinic_training(tmp_path / "missing.csv")
    assert refused.value.exit_code is ExitCode.INVALID_DATA


def test_noise_below_the_floor_is_refused_before_training() -> None:
    with pytest.raises(TrainingConfigError, match="noise_multiplier must be"):
        audit_clinic_training(noise_multiplier=0.01, **SMALL)


def test_too_small_an_audit_is_inconclusive_never_consistent() -> None:
    result = audit_clinic_training(noise_multiplier=1.0, **SMALL)
    assert (result.canaries, result.guesses, result.accountant) == (20, 5, "rdp")
    assert result.noise_multiplier == 1.0 and result.delta <= 1e-5
    assert 0 <= result.epsilon_lower_bound < result.epsilon_accounted
    assert result.max_provable_epsilon < result.epsilon_accounted
    assert result.verdict is AuditVerdict.INCONCLUSIVE and not result.consistent


def test_the_platform_defaults_are_audited_conclusively() -> None:
    """Everything at its default: the platform's round plan at target ε = 3, calibrated by the
    default accountant, and the audit's 1000 canaries of each kind and 200 guesses."""
    result = audit_clinic_training()
    assert (result.canaries, result.guesses) == (DEFAULT_CANARIES, DEFAULT_INCLUDED_GUESSES)
    assert result.epsilon_accounted == pytest.approx(3.0, abs=0.02)
    assert result.max_provable_epsilon > result.epsilon_accounted >= result.epsilon_lower_bound
    assert result.verdict is AuditVerdict.CONSISTENT and result.consistent
