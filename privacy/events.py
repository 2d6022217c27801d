"""The privacy mechanisms a clinic can run, as plain values the ledger records.

An event says which mechanism touched a data set and with which parameters; it carries no
ε. ε is a property of the whole history at a chosen δ and is recomputed by an accountant
(:mod:`privacy.accountants`) every time, because per-event ε values do not add up to the
ε of their composition.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import dp_accounting

# Below this a release is essentially non-private (one Gaussian release at 0.1 already has
# ε ≈ 92 at δ = 1e-5), and the numerical accountants need tens of seconds and, further down,
# gigabytes of memory to say so (PLD at 0.01 runs out of memory): a misconfigured noise
# level must fail fast at construction instead of stalling a clinic node.
MIN_NOISE_MULTIPLIER = 0.1


def _require_noise_multiplier(value: float) -> None:
    if not (math.isfinite(value) and value >= MIN_NOISE_MULTIPLIER):
        raise ValueError(
            f"noise_multiplier must be a finite number >= {MIN_NOISE_MULTIPLIER}, got {value!r}"
        )


def _require_count(field: str, value: int) -> None:
    # bool is an int subclass; True as a step count is always a bug upstream.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class DpSgdEvent:
    """``steps`` DP-SGD steps: a Poisson-subsampled Gaussian mechanism composed ``steps`` times.

    ``noise_multiplier`` is sigma / clipping norm and ``sample_rate`` the Poisson sampling
    probability (Opacus: batch size / data set size), exactly what Opacus' accountants record.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        _require_noise_multiplier(self.noise_multiplier)
        if not (0 < self.sample_rate <= 1):
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        _require_count("steps", self.steps)


@dataclass(frozen=True)
class GaussianEvent:
    """``count`` releases with Gaussian noise of sigma = ``noise_multiplier`` * L2 sensitivity."""

    noise_multiplier: float
    count: int = 1

    def __post_init__(self) -> None:
        _require_noise_multiplier(self.noise_multiplier)
        _require_count("count", self.count)


@dataclass(frozen=True)
class LaplaceEvent:
    """``count`` releases with Laplace noise of scale b = ``noise_multiplier`` * L1 sensitivity.

    One release is (1 / ``noise_multiplier``)-DP.
    """

    noise_multiplier: float
    count: int = 1

    def __post_init__(self) -> None:
        _require_noise_multiplier(self.noise_multiplier)
        _require_count("count", self.count)


PrivacyEvent: TypeAlias = DpSgdEvent | GaussianEvent | LaplaceEvent

_MECHANISMS: dict[type[PrivacyEvent], str] = {
    DpSgdEvent: "dpsgd",
    GaussianEvent: "gaussian",
    LaplaceEvent: "laplace",
}
_EVENT_TYPES: dict[str, type[PrivacyEvent]] = {name: cls for cls, name in _MECHANISMS.items()}


def mechanism_name(event: PrivacyEvent) -> str:
    """The stable name stored in the ledger and in serialised events."""
    try:
        return _MECHANISMS[type(event)]
    except KeyError:
        raise TypeError(f"not a privacy event: {event!r}") from None


def repetitions(event: PrivacyEvent) -> int:
    """How many times the mechanism was applied: DP-SGD ``steps`` or a release ``count``."""
    return event.steps if isinstance(event, DpSgdEvent) else event.count


def with_repetitions(event: PrivacyEvent, n: int) -> PrivacyEvent:
    """The same mechanism with the same parameters, applied ``n`` times."""
    if isinstance(event, DpSgdEvent):
        return DpSgdEvent(event.noise_multiplier, event.sample_rate, n)
    return type(event)(event.noise_multiplier, n)


def merge_identical(events: Iterable[PrivacyEvent]) -> list[PrivacyEvent]:
    """Fold events with the same mechanism and parameters into one event.

    Composition does not depend on order, and accountants compose ``n`` identical
    mechanisms far faster (one self-composition) than ``n`` separate ones, so a ledger with
    hundreds of identical training rounds costs about as much to account as a single round.
    First-seen order is kept so results are reproducible.
    """
    totals: Counter[PrivacyEvent] = Counter()
    for event in events:
        totals[with_repetitions(event, 1)] += repetitions(event)
    return [with_repetitions(unit, n) for unit, n in totals.items()]


def to_dp_event(event: PrivacyEvent) -> dp_accounting.DpEvent:
    """The equivalent dp-accounting event, which its PLD and RDP accountants understand."""
    single: dp_accounting.DpEvent
    if isinstance(event, DpSgdEvent):
        single = dp_accounting.PoissonSampledDpEvent(
            event.sample_rate, dp_accounting.GaussianDpEvent(event.noise_multiplier)
        )
    elif isinstance(event, GaussianEvent):
        single = dp_accounting.GaussianDpEvent(event.noise_multiplier)
    elif isinstance(event, LaplaceEvent):
        single = dp_accounting.LaplaceDpEvent(event.noise_multiplier)
    else:
        raise TypeError(f"not a privacy event: {event!r}")
    return dp_accounting.SelfComposedDpEvent(single, repetitions(event))


def event_to_dict(event: PrivacyEvent) -> dict[str, Any]:
    """A JSON-safe dict naming the mechanism, for storage and messages."""
    if isinstance(event, DpSgdEvent):
        return {
            "mechanism": "dpsgd",
            "noise_multiplier": event.noise_multiplier,
            "sample_rate": event.sample_rate,
            "steps": event.steps,
        }
    return {
        "mechanism": mechanism_name(event),
        "noise_multiplier": event.noise_multiplier,
        "count": event.count,
    }


def event_from_dict(data: Mapping[str, Any]) -> PrivacyEvent:
    """Inverse of :func:`event_to_dict`; validates like the constructors do."""
    fields = dict(data)
    name = fields.pop("mechanism", None)
    cls = _EVENT_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown mechanism {name!r}; expected one of {sorted(_EVENT_TYPES)}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ValueError(f"invalid fields for mechanism {name!r}: {exc}") from exc
