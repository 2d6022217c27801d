"""Accountants, events and calibration, checked against dp-accounting and Opacus directly."""

from __future__ import annotations

import math
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant

from oralfed.privacy.accountants import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    PldAccountant,
    PrvAccountant,
    RdpAccountant,
    UnsupportedEvent,
    get_accountant,
)
from oralfed.privacy.accountants.gaussian_loss import subsampled_gaussian_distribution
from oralfed.privacy.accountants.pld import discrete_gaussian_pld
from oralfed.privacy.calibration import default_delta, dpsgd_epsilon, noise_multiplier_for_epsilon
from oralfed.privacy.events import (
    LATTICE_UNITS,
    MIN_NOISE_MULTIPLIER,
    DiscreteGaussianEvent,
    DiscreteLaplaceEvent,
    DpSgdEvent,
    GaussianEvent,
    LaplaceEvent,
    PrivacyEvent,
    event_from_dict,
    event_to_dict,
    mechanism_name,
    merge_identical,
    to_dp_event,
)

DELTA = 1e-5
# (noise_multiplier, sample_rate, steps): the range a clinic's DP-SGD round plausibly covers.
DPSGD_SETTINGS = [(0.8, 0.01, 1000), (1.0, 0.05, 500), (2.0, 0.1, 2000), (1.2, 0.02, 100)]


def direct_pld_epsilon(noise_multiplier: float, sample_rate: float, steps: int) -> float:
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )
    return accountant.get_epsilon(DELTA)


def direct_prv_epsilon(noise_multiplier: float, sample_rate: float, steps: int) -> float:
    accountant = PRVAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return accountant.get_epsilon(DELTA)


# --- accountants against the libraries --------------------------------------------------------


@pytest.mark.parametrize(("sigma", "q", "steps"), DPSGD_SETTINGS)
def test_dpsgd_epsilon_agrees_with_libraries(sigma: float, q: float, steps: int) -> None:
    events = [DpSgdEvent(sigma, q, steps)]
    pld = PldAccountant().epsilon(events, DELTA)
    prv = PrvAccountant().epsilon(events, DELTA)
    rdp = RdpAccountant().epsilon(events, DELTA)

    assert pld == pytest.approx(direct_pld_epsilon(sigma, q, steps), abs=1e-9)
    assert prv == pytest.approx(direct_prv_epsilon(sigma, q, steps), abs=1e-9)
    assert abs(pld - prv) <= 0.02
    assert rdp >= pld


def test_history_of_identical_rounds_composes_like_one_long_run() -> None:
    rounds = [DpSgdEvent(1.0, 0.02, 100)] * 10
    assert merge_identical(rounds) == [DpSgdEvent(1.0, 0.02, 1000)]
    assert PldAccountant().epsilon(rounds, DELTA) == pytest.approx(
        direct_pld_epsilon(1.0, 0.02, 1000), abs=1e-9
    )


def test_merge_identical_keeps_distinct_mechanisms_apart() -> None:
    events: list[PrivacyEvent] = [
        GaussianEvent(2.0),
        LaplaceEvent(2.0),
        GaussianEvent(2.0, 3),
        DpSgdEvent(2.0, 0.1, 5),
        DpSgdEvent(2.0, 0.2, 5),
        DpSgdEvent(2.0, 0.1, 7),
        DiscreteGaussianEvent(2.0),
        DiscreteGaussianEvent(2.0, 2),
    ]
    assert merge_identical(events) == [
        GaussianEvent(2.0, 4),
        LaplaceEvent(2.0),
        DpSgdEvent(2.0, 0.1, 12),
        DpSgdEvent(2.0, 0.2, 5),
        DiscreteGaussianEvent(2.0, 3),
    ]


@pytest.mark.parametrize("count", [1, 4])
def test_gaussian_event_matches_the_analytic_gaussian_mechanism(count: int) -> None:
    # k Gaussian releases at sigma compose exactly to one release at sigma / sqrt(k).
    exact = dp_accounting.get_epsilon_gaussian(3.0 / math.sqrt(count), DELTA)
    events = [GaussianEvent(3.0, count)]
    assert PldAccountant().epsilon(events, DELTA) == pytest.approx(exact, abs=1e-3)
    assert abs(PrvAccountant().epsilon(events, DELTA) - exact) <= 0.02
    assert RdpAccountant().epsilon(events, DELTA) >= exact


def test_laplace_event_is_at_most_its_pure_dp_epsilon() -> None:
    # One Laplace release with b = 2 * sensitivity is (0.5, 0)-DP; three compose to 1.5.
    epsilon = PldAccountant().epsilon([LaplaceEvent(2.0, 3)], DELTA)
    assert 1.3 < epsilon <= 1.5 + 1e-3


def test_mixed_history_composes_under_pld_and_rdp() -> None:
    parts: list[PrivacyEvent] = [
        DpSgdEvent(1.0, 0.02, 200),
        GaussianEvent(5.0, 2),
        LaplaceEvent(4.0),
        DiscreteGaussianEvent(5.0, 2),
        DiscreteLaplaceEvent(4.0),
    ]
    pld, rdp = PldAccountant(), RdpAccountant()
    mixed_pld = pld.epsilon(parts, DELTA)
    assert mixed_pld > max(pld.epsilon([part], DELTA) for part in parts)
    assert mixed_pld < sum(pld.epsilon([part], DELTA) for part in parts)
    assert rdp.epsilon(parts, DELTA) >= mixed_pld


def test_prv_refuses_laplace() -> None:
    with pytest.raises(UnsupportedEvent, match="Laplace"):
        PrvAccountant().epsilon([DpSgdEvent(1.0, 0.01, 10), LaplaceEvent(1.0)], DELTA)


# --- discrete events ----------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(
    sigma=st.floats(0.5, 6.0),
    sample_rate=st.one_of(st.floats(0.001, 0.999), st.just(1.0)),
    interval=st.sampled_from([1e-4, 1e-3]),
)
def test_the_vectorised_gaussian_step_is_dp_accountings_bit_for_bit(
    sigma: float, sample_rate: float, interval: float
) -> None:
    ours = subsampled_gaussian_distribution(sigma, sample_rate, interval)
    theirs = privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=sigma, sampling_prob=sample_rate, value_discretization_interval=interval
    )
    for mine, reference in (
        (ours._pmf_remove, theirs._pmf_remove),
        (ours._pmf_add, theirs._pmf_add),
    ):
        assert type(mine) is type(reference)  # dense, or sparse for a narrow loss range
        mine, reference = mine.to_dense_pmf(), reference.to_dense_pmf()
        assert mine._lower_loss == reference._lower_loss
        assert mine._infinity_mass == reference._infinity_mass
        assert np.array_equal(mine._probs, reference._probs)


@pytest.mark.parametrize(("sigma", "sensitivity"), [(0.5, 1), (3.0, 1), (2.0, 3), (200.0, 100)])
def test_discrete_gaussian_pld_is_dp_accountings(sigma: float, sensitivity: int) -> None:
    """The vectorised PLD is the same privacy buckets dp-accounting builds point by point."""
    ours = discrete_gaussian_pld(sigma, sensitivity)
    theirs = privacy_loss_distribution.from_discrete_gaussian_mechanism(
        sigma, sensitivity=sensitivity
    )
    for count in (1, 3):
        for delta in (1e-3, DELTA):
            assert ours.self_compose(count).get_epsilon_for_delta(delta) == pytest.approx(
                theirs.self_compose(count).get_epsilon_for_delta(delta), abs=1e-6
            )


@pytest.mark.parametrize("count", [1, 2])
def test_discrete_gaussian_event_is_its_lattice_mechanism(count: int) -> None:
    """σ = m·K on sensitivity K, composed ``count`` times; next to the continuous Gaussian."""
    event = DiscreteGaussianEvent(3.0, count)
    exact = privacy_loss_distribution.from_discrete_gaussian_mechanism(
        3.0 * LATTICE_UNITS, sensitivity=LATTICE_UNITS
    ).self_compose(count)
    pld = PldAccountant().epsilon([event], DELTA)
    assert pld == pytest.approx(exact.get_epsilon_for_delta(DELTA), abs=1e-6)
    assert pld == pytest.approx(PldAccountant().epsilon([GaussianEvent(3.0, count)], DELTA), 1e-3)


def test_a_smaller_shift_of_a_discrete_gaussian_leaks_less() -> None:
    """Why the event's shift Δ covers a sum whose patient moves it by fewer units."""
    for sigma in (0.7, 3.0, 10.0):
        worst = discrete_gaussian_pld(sigma, 5).get_epsilon_for_delta(DELTA)
        for shift in range(1, 5):
            assert discrete_gaussian_pld(sigma, shift).get_epsilon_for_delta(DELTA) < worst


@pytest.mark.parametrize("count", [1, 3])
def test_discrete_gaussian_rdp_is_its_zcdp(count: int) -> None:
    """rho = 1 / (2 m²) per release, which is also the continuous Gaussian's RDP bound."""
    direct = dp_accounting.rdp.RdpAccountant()
    direct.compose(dp_accounting.ZCDpEvent(1 / (2 * 3.0**2)), count)
    rdp = RdpAccountant().epsilon([DiscreteGaussianEvent(3.0, count)], DELTA)
    assert rdp == pytest.approx(direct.get_epsilon(DELTA), abs=1e-9)
    assert rdp == pytest.approx(RdpAccountant().epsilon([GaussianEvent(3.0, count)], DELTA))


@pytest.mark.parametrize("multiplier", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("count", [1, 2, 5])
def test_discrete_laplace_event_bounds_a_lattice_sum(multiplier: float, count: int) -> None:
    """A sum of sensitivity K at scale m·K is charged as sensitivity 1 at scale m: never less
    than its exact PLD, and the same pure ε = count / m."""
    charged = DiscreteLaplaceEvent(multiplier, count)
    exact = privacy_loss_distribution.from_discrete_laplace_mechanism(
        1 / (multiplier * LATTICE_UNITS), sensitivity=LATTICE_UNITS
    ).self_compose(count)
    for delta in (1e-2, 1e-3, DELTA):
        bound = PldAccountant().epsilon([charged], delta)
        assert bound >= exact.get_epsilon_for_delta(delta) - 1e-9
        assert bound <= count / multiplier + 1e-9


def test_prv_refuses_discrete_releases() -> None:
    for event in (DiscreteGaussianEvent(3.0), DiscreteLaplaceEvent(3.0)):
        with pytest.raises(UnsupportedEvent, match="discrete"):
            PrvAccountant().epsilon([event], DELTA)


def test_dp_accounting_has_no_discrete_gaussian_event() -> None:
    with pytest.raises(TypeError, match="dp-accounting"):
        to_dp_event(DiscreteGaussianEvent(2.0))


def test_prv_composes_dpsgd_with_gaussian_like_pld() -> None:
    events: list[PrivacyEvent] = [DpSgdEvent(1.0, 0.02, 300), GaussianEvent(6.0)]
    pld = PldAccountant().epsilon(events, DELTA)
    assert abs(PrvAccountant().epsilon(events, DELTA) - pld) <= 0.02


@pytest.mark.parametrize("name", sorted(ACCOUNTANTS))
def test_no_events_spend_nothing(name: str) -> None:
    assert get_accountant(name).epsilon([], DELTA) == 0.0


@pytest.mark.parametrize("name", sorted(ACCOUNTANTS))
@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 1.5, math.nan])
def test_invalid_delta_is_refused(name: str, delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        get_accountant(name).epsilon([GaussianEvent(1.0)], delta)


def test_registry() -> None:
    assert DEFAULT_ACCOUNTANT == "pld"
    assert {name: cls.name for name, cls in ACCOUNTANTS.items()} == {
        "pld": "pld",
        "prv": "prv",
        "rdp": "rdp",
    }
    assert isinstance(get_accountant("rdp"), RdpAccountant)
    with pytest.raises(ValueError, match="pld, prv, rdp"):
        get_accountant("moments")


def test_privacy_package_does_not_import_torch_or_flwr() -> None:
    code = (
        "import sys, privacy.ledger, privacy.calibration, privacy.accountants;"
        "assert not {'torch', 'flwr', 'opacus'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- events -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: DpSgdEvent(0.0, 0.1, 10), "noise_multiplier"),
        (lambda: DpSgdEvent(-1.0, 0.1, 10), "noise_multiplier"),
        (lambda: DpSgdEvent(math.inf, 0.1, 10), "noise_multiplier"),
        (lambda: DpSgdEvent(math.nan, 0.1, 10), "noise_multiplier"),
        (lambda: DpSgdEvent(0.05, 0.1, 10), "noise_multiplier"),
        (lambda: DpSgdEvent(1.0, 0.0, 10), "sample_rate"),
        (lambda: DpSgdEvent(1.0, 1.1, 10), "sample_rate"),
        (lambda: DpSgdEvent(1.0, math.nan, 10), "sample_rate"),
        (lambda: DpSgdEvent(1.0, 0.1, 0), "steps"),
        (lambda: DpSgdEvent(1.0, 0.1, 2.5), "steps"),
        (lambda: DpSgdEvent(1.0, 0.1, True), "steps"),
        (lambda: GaussianEvent(0.0), "noise_multiplier"),
        (lambda: GaussianEvent(1.0, 0), "count"),
        (lambda: LaplaceEvent(-2.0), "noise_multiplier"),
        (lambda: LaplaceEvent(1.0, -1), "count"),
        (lambda: DiscreteGaussianEvent(0.05), "noise_multiplier"),
        (lambda: DiscreteGaussianEvent(1.0, 0), "count"),
    ],
)
def test_invalid_events_are_refused(make: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "event",
    [
        DpSgdEvent(1.1, 0.01, 300),
        GaussianEvent(2.0, 3),
        LaplaceEvent(0.5),
        DiscreteLaplaceEvent(2.0, 2),
        DiscreteGaussianEvent(6.5, 2),
    ],
)
def test_events_round_trip_through_dicts(event: PrivacyEvent) -> None:
    data = event_to_dict(event)
    assert data["mechanism"] == mechanism_name(event)
    assert event_from_dict(data) == event


@pytest.mark.parametrize(
    "data",
    [
        {"mechanism": "exponential", "noise_multiplier": 1.0},
        {"noise_multiplier": 1.0, "count": 1},
        {"mechanism": "gaussian", "noise_multiplier": 1.0, "steps": 3},
        {"mechanism": "dpsgd", "noise_multiplier": 1.0, "sample_rate": 2.0, "steps": 3},
    ],
)
def test_bad_event_dicts_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        event_from_dict(data)


def test_to_dp_event_builds_self_composed_events() -> None:
    assert to_dp_event(DpSgdEvent(1.0, 0.1, 7)) == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 7
    )
    assert to_dp_event(GaussianEvent(2.0, 3)) == dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(2.0), 3
    )
    assert to_dp_event(LaplaceEvent(4.0)) == dp_accounting.SelfComposedDpEvent(
        dp_accounting.LaplaceDpEvent(4.0), 1
    )


# --- calibration ------------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", sorted(ACCOUNTANTS))
def test_noise_multiplier_round_trips(accountant: str) -> None:
    target, tolerance = 1.0, 0.01
    sigma = noise_multiplier_for_epsilon(target, 0.01, 100, DELTA, accountant, tolerance)
    achieved = dpsgd_epsilon(sigma, 0.01, 100, DELTA, accountant)
    assert target - tolerance <= achieved <= target


@pytest.mark.parametrize(("sample_rate", "steps"), [(0.02, 137), (0.2, 11), (0.005, 1200)])
def test_pld_calibration_searches_on_the_quick_grid_and_confirms_once_on_the_exact_one(
    sample_rate: float, steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact: list[float] = []
    compose = PldAccountant._epsilon

    def counted(self: PldAccountant, events: tuple[DpSgdEvent, ...], delta: float) -> float:
        exact.append(events[0].noise_multiplier)
        return compose(self, events, delta)

    monkeypatch.setattr(PldAccountant, "_epsilon", counted)
    target = 1.7  # a plan no other test calibrates: nothing is remembered yet
    sigma = noise_multiplier_for_epsilon(target, sample_rate, steps, DELTA, "pld", 0.01)
    assert exact == [sigma]  # one exact evaluation: the level kept
    assert target - 0.01 <= dpsgd_epsilon(sigma, sample_rate, steps, DELTA, "pld") <= target
    quick = PldAccountant().screening_epsilon([DpSgdEvent(sigma, sample_rate, steps)], DELTA)
    assert abs(quick - dpsgd_epsilon(sigma, sample_rate, steps, DELTA, "pld")) < 1e-3


def test_looser_accountant_needs_more_noise() -> None:
    pld = noise_multiplier_for_epsilon(1.0, 0.01, 100, DELTA, "pld", tolerance=0.05)
    rdp = noise_multiplier_for_epsilon(1.0, 0.01, 100, DELTA, "rdp", tolerance=0.05)
    assert rdp > pld


def test_calibration_brackets_downwards_for_generous_targets() -> None:
    sigma = noise_multiplier_for_epsilon(50.0, 1.0, 1, DELTA, "rdp")
    assert sigma < 0.5
    assert 49.99 <= dpsgd_epsilon(sigma, 1.0, 1, DELTA, "rdp") <= 50.0


def test_calibration_never_goes_below_the_noise_floor() -> None:
    assert noise_multiplier_for_epsilon(1e4, 1.0, 1, DELTA, "rdp") == MIN_NOISE_MULTIPLIER


@pytest.mark.parametrize("target", [0.0, -1.0, math.inf, math.nan])
def test_calibration_refuses_bad_targets(target: float) -> None:
    with pytest.raises(ValueError, match="target_epsilon"):
        noise_multiplier_for_epsilon(target, 0.01, 100, DELTA)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "nope"}, "accountant"),
        ({"tolerance": 0.0}, "tolerance"),
    ],
)
def test_calibration_refuses_bad_parameters(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {
        "target_epsilon": 1.0,
        "sample_rate": 0.01,
        "steps": 100,
        "delta": DELTA,
        "accountant": "rdp",
    }
    with pytest.raises(ValueError, match=match):
        noise_multiplier_for_epsilon(**{**arguments, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "delta"),
    [(1, 1e-5), (500, 1e-5), (10_000, 1e-5), (10_001, 1e-6), (123_456, 1e-7), (10**7, 1e-8)],
)
def test_default_delta_is_a_power_of_ten_well_below_one_over_n(n: int, delta: float) -> None:
    assert default_delta(n) == delta
    assert default_delta(n) <= 1 / (10 * n)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_default_delta_refuses_non_counts(n: int) -> None:
    with pytest.raises(ValueError, match="n_records"):
        default_delta(n)
