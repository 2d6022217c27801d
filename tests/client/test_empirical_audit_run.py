"""The empirical audit from plain settings: refused before anything is loaded or trained,
and run on a synthetic clinic planned as a clinic plans one round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from oralfed.client.data import ClinicDataError
from oralfed.client.empirical_audit_run import audit_clinic_training
from oralfed.client.training import TrainingConfigError
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.settings import SettingsError

SMALL = {"canaries": 20, "guesses_per_side": 5, "local_epochs": 1, "accountant": "rdp"}


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


def test_a_synthetic_clinic_is_audited_as_one_round() -> None:
    result = audit_clinic_training(noise_multiplier=1.0, **SMALL)
    assert (result.canaries, result.guesses, result.accountant) == (20, 10, "rdp")
    assert result.noise_multiplier == 1.0 and result.delta <= 1e-5
    assert result.consistent and 0 <= result.epsilon_lower_bound < result.epsilon_accounted
