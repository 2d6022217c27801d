"""The on-disk calibration cache: same σ as a fresh calibration, computed once per plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from oralfed.privacy import calibration
from oralfed.privacy.calibration import CalibrationCache, noise_multiplier_for_epsilon

PLAN = (2.0, 0.05, 200, 1e-5)


def test_cached_sigma_is_the_calibrated_one_and_survives_a_new_process(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    sigma = CalibrationCache(path).noise_multiplier(*PLAN)
    assert sigma == noise_multiplier_for_epsilon(*PLAN)
    assert CalibrationCache(path).noise_multiplier(*PLAN) == sigma  # a fresh object: from disk


def test_a_cached_plan_is_not_recalibrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = CalibrationCache(tmp_path / "cache.json")
    sigma = cache.noise_multiplier(*PLAN)

    def refuse(*_: object, **__: object) -> float:
        raise AssertionError("recalibrated a cached plan")

    monkeypatch.setattr(calibration, "noise_multiplier_for_epsilon", refuse)
    assert cache.noise_multiplier(*PLAN) == sigma
    with pytest.raises(AssertionError):  # any other input is a different plan
        cache.noise_multiplier(2.0, 0.05, 201, 1e-5)


def test_an_unreadable_cache_is_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    assert CalibrationCache(path).noise_multiplier(*PLAN) == noise_multiplier_for_epsilon(*PLAN)
    assert path.read_text().startswith("{\n")


def test_a_second_clinic_with_the_same_plan_gets_the_same_sigma_without_a_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clinics of one process share no state, only the answers of a pure function: each
    keeps its own file, and the second one's σ is what a fresh calibration gives."""
    plan = (2.5, 0.04, 150, 1e-5)
    first = CalibrationCache(tmp_path / "clinic-a.json").noise_multiplier(*plan)

    def refuse(*_: object, **__: object) -> float:
        raise AssertionError("bisected again for a plan this process has calibrated")

    monkeypatch.setattr(calibration, "noise_multiplier_for_epsilon", refuse)
    second_file = tmp_path / "clinic-b.json"
    assert CalibrationCache(second_file).noise_multiplier(*plan) == first
    assert second_file.exists()
    with pytest.raises(AssertionError):  # another plan is searched for
        CalibrationCache(second_file).noise_multiplier(2.5, 0.04, 151, 1e-5)
    monkeypatch.undo()
    calibration.calibrated_noise_multiplier.cache_clear()
    assert noise_multiplier_for_epsilon(*plan) == first
