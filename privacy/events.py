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
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias

import dp_accounting
from dp_accounting import dp_event

# Below this a release is essentially non-private (one Gaussian release at 0.1 already has
# ε ≈ 92 at δ = 1e-5), and the numerical accountants need tens of seconds and, further down,
# gigabytes of memory to say so (PLD at 0.01 runs out of memory): a misconfigured noise
# level must fail fast at construction instead of stalling a clinic node.
MIN_NOISE_MULTIPLIER = 0.1
# Integer units per unit of sensitivity on which the statistics mechanisms add discrete
# Gaussian noise (see DiscreteGaussianEvent). Stored ledger rows mean "σ = noise_multiplier x
# this many units, on sensitivity this many units": a different lattice needs a new mechanism
# name, never a new value here.
LATTICE_UNITS: Final = 1024


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
class _Releases:
    """``count`` releases of one noise mechanism at ``noise_multiplier`` (noise scale per
    unit of sensitivity): the fields and checks every non-sampled event shares."""

    noise_multiplier: float
    count: int = 1

    def __post_init__(self) -> None:
        _require_noise_multiplier(self.noise_multiplier)
        _require_count("count", self.count)


@dataclass(frozen=True)
class GaussianEvent(_Releases):
    """``count`` releases with Gaussian noise of sigma = ``noise_multiplier`` * L2 sensitivity."""


@dataclass(frozen=True)
class LaplaceEvent(_Releases):
    """``count`` releases with Laplace noise of scale b = ``noise_multiplier`` * L1 sensitivity.

    One release is (1 / ``noise_multiplier``)-DP.
    """


@dataclass(frozen=True)
class DiscreteLaplaceEvent(_Releases):
    """``count`` integer releases of L1 sensitivity 1 (counts, histograms over disjoint
    cells) with discrete Laplace noise P(z) ∝ exp(-|z| / b), b = ``noise_multiplier``:
    (1 / b)-DP each.

    Exact samplers (``oralfed.privacy.samplers``) make the analysis hold for the bits that
    are released. Its privacy loss takes only the values ±ε, the worst case of pure ε-DP:
    accounting it as a *continuous* Laplace release would under-count.

    The same event is a sound upper bound for a release of integer L1 sensitivity Δ > 1
    (a clipped sum on a lattice) with scale b = ``noise_multiplier`` · Δ: that release is
    ε-DP with the same ε = Δ / b, and a sensitivity-1 discrete Laplace release has exactly
    the privacy-loss distribution of binary randomised response at ε (loss +ε with
    probability e^ε / (1 + e^ε), else -ε), which dominates every ε-DP mechanism (Kairouz, Oh
    and Viswanath 2015), and dominating pairs compose (Zhu, Dong and Wang 2022). It is not
    exact for Δ > 1: the true loss also takes the values in between, so the ledger
    over-charges a little at δ > 0 (and not at all at δ = 0).
    """

    @property
    def epsilon(self) -> float:
        """ε of one release (pure DP)."""
        return 1.0 / self.noise_multiplier


@dataclass(frozen=True)
class DiscreteGaussianEvent(_Releases):
    """``count`` integer releases with discrete Gaussian noise, P(z) ∝ exp(-z² / (2σ²)),
    computed on a lattice of Δ = :data:`LATTICE_UNITS` units per unit of sensitivity with
    σ = ``noise_multiplier`` · Δ units.

    One patient moves one coordinate of each released vector by at most Δ units: a count by
    exactly Δ (it is released as Δ · count + noise, rounded back to whole records, which is
    post-processing), a clipped value by its snapped size (at most Δ). Only that coordinate's
    noise then differs, so the pair of output distributions is the one-dimensional
    N_Z(0, σ²) against N_Z(d, σ²) with |d| ≤ Δ, and the shift Δ is the worst case: the
    discrete Gaussian is log-concave, so the likelihood ratio is monotone, the optimal tests
    are thresholds, and at every type-I error a larger shift gives a smaller type-II error
    (its tradeoff curve interpolates the same type-I nodes with lower type-II values).

    Accounting: the PLD of that pair, computed exactly by the pld accountant (dp-accounting
    has no discrete Gaussian DpEvent; the result agrees with its
    ``from_discrete_gaussian_mechanism``); rho = Δ² / (2σ²) = 1 / (2 ``noise_multiplier``²)
    zCDP for the rdp accountant (Canonne, Kamath and Steinke 2020: the Rényi divergence of
    order a is at most aΔ² / (2σ²), with equality when (a - 1)Δ is an integer). PRV models
    no discrete mechanism.
    """

    @property
    def sensitivity(self) -> int:
        """Δ: the most one patient moves a released coordinate, in lattice units."""
        return LATTICE_UNITS

    @property
    def sigma(self) -> float:
        """The noise parameter σ in lattice units."""
        return self.noise_multiplier * LATTICE_UNITS

    @property
    def rho(self) -> float:
        """zCDP rho of one release."""
        return 1.0 / (2.0 * self.noise_multiplier**2)


PrivacyEvent: TypeAlias = (
    DpSgdEvent | GaussianEvent | LaplaceEvent | DiscreteLaplaceEvent | DiscreteGaussianEvent
)

_MECHANISMS: dict[type[PrivacyEvent], str] = {
    DpSgdEvent: "dpsgd",
    GaussianEvent: "gaussian",
    LaplaceEvent: "laplace",
    DiscreteLaplaceEvent: "discrete_laplace",
    DiscreteGaussianEvent: "discrete_gaussian",
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
        return replace(event, steps=n)
    return replace(event, count=n)


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
    """The equivalent dp-accounting event, which its PLD and RDP accountants understand.

    A :class:`DiscreteGaussianEvent` has none: the accountants describe it themselves.
    """
    single: dp_accounting.DpEvent
    if isinstance(event, DpSgdEvent):
        single = dp_accounting.PoissonSampledDpEvent(
            event.sample_rate, dp_accounting.GaussianDpEvent(event.noise_multiplier)
        )
    elif isinstance(event, GaussianEvent):
        single = dp_accounting.GaussianDpEvent(event.noise_multiplier)
    elif isinstance(event, LaplaceEvent):
        single = dp_accounting.LaplaceDpEvent(event.noise_multiplier)
    elif isinstance(event, DiscreteLaplaceEvent):
        single = dp_event.DiscreteLaplaceDpEvent(1.0 / event.noise_multiplier, 1)
    elif isinstance(event, DiscreteGaussianEvent):
        raise TypeError(f"dp-accounting has no event for {event!r}; account it directly")
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
