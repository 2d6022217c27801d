"""An accountant remembers ε of a history it composed: the same answer for the same whole
input, never an answer for another one (the clinic runtime relies on it between messages)."""

from __future__ import annotations

import json
from pathlib import Path

from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.accountants.base import _composed_epsilon
from oralfed.privacy.calibration import CalibrationCache
from oralfed.privacy.events import DiscreteLaplaceEvent, DpSgdEvent

STEP = DpSgdEvent(noise_multiplier=1.3, sample_rate=0.05, steps=40)


def test_a_history_composed_again_gives_the_same_epsilon_from_memory() -> None:
    history = [STEP, DiscreteLaplaceEvent(noise_multiplier=0.3)]
    first = get_accountant("pld").epsilon(history, 1e-6)
    hits = _composed_epsilon.cache_info().hits
    assert get_accountant("pld").epsilon(list(history), 1e-6) == first
    assert _composed_epsilon.cache_info().hits == hits + 1


def test_every_part_of_the_input_is_part_of_the_key() -> None:
    base = get_accountant("pld").epsilon([STEP], 1e-6)
    longer = get_accountant("pld").epsilon([STEP, STEP], 1e-6)  # merged: 80 steps
    other_delta = get_accountant("pld").epsilon([STEP], 1e-5)
    other_accountant = get_accountant("rdp").epsilon([STEP], 1e-6)
    assert len({base, longer, other_delta, other_accountant}) == 4
    assert longer > base > other_delta


def test_compose_latest_prepares_the_check_of_a_cached_sigma(tmp_path: Path) -> None:
    cache = CalibrationCache(tmp_path / "calibration-cache.json")
    sigma = cache.noise_multiplier(2.0, 0.05, 60, 1e-6)
    _composed_epsilon.cache_clear()
    cache.compose_latest()
    misses = _composed_epsilon.cache_info().misses
    assert cache.noise_multiplier(2.0, 0.05, 60, 1e-6) == sigma
    assert _composed_epsilon.cache_info().misses == misses  # the check was answered from memory


def test_compose_latest_skips_entries_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "calibration-cache.json"
    path.write_text(json.dumps({"not a key": 1.0, json.dumps([1, 2]): "x", "[]": None}))
    CalibrationCache(path).compose_latest()  # nothing raised, nothing written
    CalibrationCache(tmp_path / "missing.json").compose_latest()
    assert not (tmp_path / "missing.json").exists()
