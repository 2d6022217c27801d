"""Choosing DP-SGD parameters: ε for a plan, sigma for a target ε, and a sensible default δ.

All figures come from the same accountants the ledger charges with, so a noise multiplier
calibrated here for a target ε is exactly what the ledger will charge for that training.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TypeGuard

from oralfed.privacy.accountants import DEFAULT_ACCOUNTANT, get_accountant
from oralfed.privacy.events import (
    MIN_NOISE_MULTIPLIER,
    DpSgdEvent,
    PrivacyEvent,
    event_from_dict,
    event_to_dict,
)
from oralfed.schemas.files import write_text_atomically

__all__ = [
    "UNKNOWN_SIZE_DELTA",
    "CalibrationCache",
    "calibrated_noise_multiplier",
    "default_delta",
    "dpsgd_epsilon",
    "noise_multiplier_for_epsilon",
]

# δ for a data set whose size is not public: at most 1/(10 n) for up to 100,000 records.
# A clinic with more declares its size public (or its δ) in its node config.
UNKNOWN_SIZE_DELTA = 1e-6
# Past this sigma the model learns nothing; a target that needs more is a budget that is too small.
_MAX_NOISE_MULTIPLIER = 1e4
# How far the exact ε's confirmation brackets around the level the quick search found.
_CONFIRMING_FACTOR = 1.05


def dpsgd_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> float:
    """ε after ``steps`` DP-SGD steps with these parameters, at ``delta``."""
    event = DpSgdEvent(noise_multiplier, sample_rate, steps)
    return get_accountant(accountant).epsilon([event], delta)


def noise_multiplier_for_epsilon(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = DEFAULT_ACCOUNTANT,
    tolerance: float = 0.01,
    other_events: Sequence[PrivacyEvent] = (),
) -> float:
    """The smallest noise multiplier whose ε stays at or below ``target_epsilon``.

    ``other_events`` are the run's other releases (its evaluations, a size estimate): the
    target covers their composition with the DP-SGD steps, so a run spends at most it.

    The result always satisfies ε(sigma) ≤ target, and target - ε(sigma) ≤ ``tolerance``
    unless sigma is already pinned down to 1e-6 relative precision. Less noise than this
    would overspend the budget; more would cost accuracy for nothing. ε falls monotonically
    as sigma grows, so bisection suffices: bracket by doubling or halving from sigma = 1,
    then halve the bracket, on the accountant's quick estimate; then confirm the level found
    on the exact ε (one evaluation, unless the two disagree by more than the tolerance).
    Targets so generous that even :data:`~privacy.events.MIN_NOISE_MULTIPLIER` meets them
    get that floor.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    acct = get_accountant(accountant)

    def events(sigma: float) -> list[PrivacyEvent]:
        return [DpSgdEvent(sigma, sample_rate, steps), *other_events]

    # The search's dozen levels on the accountant's quick estimate; the level kept is then
    # confirmed, and if need be moved, on the exact ε the ledger will charge.
    plan = f"sample_rate={sample_rate}, steps={steps}, δ={delta}"
    screened = _smallest_sigma(
        lambda sigma: acct.screening_epsilon(events(sigma), delta),
        target_epsilon,
        tolerance / 2,
        plan,
    )
    return _smallest_sigma(
        lambda sigma: acct.epsilon(events(sigma), delta),
        target_epsilon,
        tolerance,
        plan,
        start=screened,
        factor=_CONFIRMING_FACTOR,
    )


@functools.lru_cache(maxsize=1024)
def calibrated_noise_multiplier(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = DEFAULT_ACCOUNTANT,
    other_events: tuple[PrivacyEvent, ...] = (),
) -> float:
    """:func:`noise_multiplier_for_epsilon` at its default tolerance, remembered by the
    process: a pure function of its arguments, all of them public parameters, so a process
    serving many clinics (a simulated federation) bisects once for every clinic whose plan
    is the same (``oralfed.client.public_size.on_size_grid`` makes that common), instead of
    once per clinic."""
    return noise_multiplier_for_epsilon(
        target_epsilon, sample_rate, steps, delta, accountant, other_events=other_events
    )


def _smallest_sigma(
    epsilon: Callable[[float], float],
    target_epsilon: float,
    tolerance: float,
    plan: str,
    start: float = 1.0,
    factor: float = 2.0,
) -> float:
    """Bisection for :func:`noise_multiplier_for_epsilon`: bracket by multiplying or dividing
    ``start`` by ``factor``, then halve the bracket. A start already within ``tolerance``
    below the target is the answer at once."""
    # The first evaluation also validates sample_rate, steps and delta.
    # Invariant once bracketed: ε(low) > target >= ε(high) = eps_high.
    high, eps_high = start, epsilon(start)
    if 0 <= target_epsilon - eps_high <= tolerance:
        return high
    if eps_high > target_epsilon:
        while eps_high > target_epsilon:
            if high >= _MAX_NOISE_MULTIPLIER:
                raise ValueError(
                    f"no noise multiplier up to {_MAX_NOISE_MULTIPLIER:g} reaches ε <= "
                    f"{target_epsilon} with {plan}"
                )
            high = min(high * factor, _MAX_NOISE_MULTIPLIER)
            eps_high = epsilon(high)
        low = high / factor
    else:
        while True:
            if high <= MIN_NOISE_MULTIPLIER:
                return high  # even the least noise an event may carry meets the target
            low = max(high / factor, MIN_NOISE_MULTIPLIER)
            eps_low = epsilon(low)
            if eps_low > target_epsilon:
                break
            high, eps_high = low, eps_low

    while target_epsilon - eps_high > tolerance and high - low > 1e-6 * high:
        mid = (low + high) / 2
        eps_mid = epsilon(mid)
        if eps_mid <= target_epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    return high


def default_delta(n_records: int) -> float:
    """δ for a data set of ``n_records``: a power of ten at most 1/(10 n), and at most 1e-5.

    δ bounds the probability that the guarantee fails outright; a mechanism that publishes
    one random record satisfies δ = 1/n, so δ must sit well below 1/n to mean anything.
    One order of magnitude below, rounded down to a power of ten, keeps the figure readable
    in reports; 1e-5 is the conventional ceiling for small clinics.
    """
    if isinstance(n_records, bool) or not isinstance(n_records, int) or n_records < 1:
        raise ValueError(f"n_records must be an integer >= 1, got {n_records!r}")
    exponent = 5
    while 10**exponent < 10 * n_records:
        exponent += 1
    return 10.0**-exponent


class CalibrationCache:
    """Noise multipliers already calibrated, kept in a small JSON file.

    A deployed clinic answers every Flower message in a fresh process, so an in-memory cache
    never hits there and each round would repeat the same seconds-long bisection. The key
    holds every input of the calibration, so a cached σ is exactly what a fresh calibration
    returns; the file is rewritten atomically.

    The file sits in the state directory, where anyone who can write it can edit it, so an
    entry is evidence, not authority: a cached σ is used only if it is a valid noise level
    whose ε, recomputed with the plan's own accountant (one evaluation, against the
    bisection's dozens), stays within the target. An entry that fails (edited to less noise,
    to a string, to nothing) and a file that cannot be read are ignored and the σ is
    calibrated afresh, so the cache can make a round faster but never cheaper than its
    target allows. A file that cannot be written (a full or read-only disk) only costs the
    next round its own calibration.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def noise_multiplier(
        self,
        target_epsilon: float,
        sample_rate: float,
        steps: int,
        delta: float,
        accountant: str = DEFAULT_ACCOUNTANT,
        other_events: Sequence[PrivacyEvent] = (),
    ) -> float:
        others = [event_to_dict(event) for event in other_events]
        key = json.dumps([target_epsilon, sample_rate, steps, delta, accountant, others])
        entries = self._read()
        cached = entries.get(key)
        if _valid_sigma(cached):
            epsilon = get_accountant(accountant).epsilon(
                [DpSgdEvent(float(cached), sample_rate, steps), *other_events], delta
            )
            if epsilon <= target_epsilon:
                return float(cached)
        sigma = calibrated_noise_multiplier(
            target_epsilon, sample_rate, steps, delta, accountant, tuple(other_events)
        )
        with suppress(OSError):
            write_text_atomically(self.path, json.dumps({**entries, key: sigma}, indent=1))
        return sigma

    def compose_latest(self, count: int = 4) -> None:
        """Do the ε check of the ``count`` newest entries now, for a process whose forks
        will ask for it (the clinic runtime's template): the accountants remember the ε of
        a history they composed (``oralfed.privacy.accountants``), so the check the next
        round makes is answered at once. Entries that do not parse are skipped here as they
        are in :meth:`noise_multiplier`."""
        for key, cached in list(self._read().items())[-count:]:
            with suppress(ValueError, TypeError, KeyError, ArithmeticError):
                _target, sample_rate, steps, delta, accountant, others = json.loads(key)
                if _valid_sigma(cached):
                    get_accountant(accountant).epsilon(
                        [
                            DpSgdEvent(float(cached), sample_rate, steps),
                            *(event_from_dict(event) for event in others),
                        ],
                        delta,
                    )

    def _read(self) -> dict[str, object]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}


def _valid_sigma(value: object) -> TypeGuard[float]:
    """A cached value that can be a noise multiplier at all (the ε check comes after)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and MIN_NOISE_MULTIPLIER <= value <= _MAX_NOISE_MULTIPLIER
    )
