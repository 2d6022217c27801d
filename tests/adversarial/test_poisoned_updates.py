"""Hostile clinics against the real strategy: robust aggregations and random corruptions.

Each robust aggregation is run with exactly as many clinics as it needs to tolerate f
hostile ones (``clinics_needed``) and the norm bound out of the way, so the aggregation
alone must hold: the global model then lies, coordinate by coordinate, within the range
of the honest clinics' models (the statement of docs/robustness.md). Random corruptions of
one reply under the default FedAvg with the norm bound are rejected or bounded: the global
model stays finite and within ``w_bad / W · (bound + largest honest norm)`` of the honest
aggregate (tests/server/test_update_checks.py derives it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oralfed.schemas.model_record import PARAMETERS
from oralfed.schemas.settings import AggregationName, FederationSettings, clinics_needed
from oralfed.server.update_checks import ModelArrays, update_norm
from tests.adversarial.federation import (
    HIDDEN,
    aggregate,
    clinic_reply,
    distance,
    honest_models,
    sent_model,
    strategy_for,
    weighted_mean,
)

TRIM = 0.2
SIZE = sent_model()[PARAMETERS].size  # the flat parameter vector's length
Attack = Callable[[ModelArrays, list[ModelArrays], int], ModelArrays]


def far_away(sent: ModelArrays, honest: list[ModelArrays], _: int) -> ModelArrays:
    """Colluding clinics, all pulling the model 1000 along the same direction."""
    return {n: (v + 1_000.0).astype(np.float32) for n, v in sent.items()}


def flipped(sent: ModelArrays, honest: list[ModelArrays], which: int) -> ModelArrays:
    """Ten times the honest clinics' mean update, reversed (a little apart per attacker)."""
    return {
        n: (
            sent[n] - 10 * (np.mean([h[n] for h in honest], axis=0) - sent[n]) + 0.001 * which
        ).astype(np.float32)
        for n in sent
    }


CASES = [
    (aggregation, hostile, attack)
    for aggregation, hostile in [
        (AggregationName.MEDIAN, 1),
        (AggregationName.MEDIAN, 2),
        (AggregationName.TRIMMED_MEAN, 1),
        (AggregationName.TRIMMED_MEAN, 2),
        (AggregationName.KRUM, 1),
        (AggregationName.KRUM, 2),
        (AggregationName.MULTIKRUM, 1),
        (AggregationName.MULTIKRUM, 2),
        (AggregationName.BULYAN, 1),
    ]
    for attack in (far_away, flipped)
]


@pytest.mark.parametrize(
    ("aggregation", "hostile", "attack"),
    CASES,
    ids=[f"{a.value}-f{f}-{attack.__name__}" for a, f, attack in CASES],
)
def test_a_robust_aggregation_tolerates_its_hostile_clinics(
    aggregation: AggregationName, hostile: int, attack: Attack
) -> None:
    n = clinics_needed(aggregation, hostile, TRIM)
    assert n is not None
    honest_ids = [f"h{i}" for i in range(n - hostile)]
    sent = sent_model()
    models = honest_models(sent, honest_ids, seed=n)
    weights = {clinic: 500.0 + 100 * i for i, clinic in enumerate(honest_ids)}
    config = FederationSettings(
        hidden_sizes=HIDDEN,
        aggregation=aggregation,
        hostile_clinics=hostile,
        trim_fraction=TRIM,
        min_clinics=n,
        update_norm_bound=1e9,  # no clipping: the aggregation alone must hold
    )
    strategy = strategy_for(config, sent)
    replies = [
        clinic_reply(node, clinic, models[clinic], weights[clinic])
        for node, clinic in enumerate(honest_ids, start=1)
    ]
    replies += [
        clinic_reply(100 + i, f"x{i}", attack(sent, list(models.values()), i), 5_000.0)
        for i in range(hostile)
    ]

    global_model = aggregate(strategy, replies)

    for name, value in global_model.items():
        stack = np.stack([m[name] for m in models.values()])
        assert np.isfinite(value).all()
        assert (value >= stack.min(axis=0) - 1e-6).all(), name
        assert (value <= stack.max(axis=0) + 1e-6).all(), name


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[str, Any, Any]:
    kind = draw(
        st.sampled_from(
            ["scale", "non-finite", "shape", "column", "dtype", "drop", "extra", "weight"]
        )
    )
    detail: Any = None
    if kind == "scale":
        detail = draw(st.floats(-1e38, 1e38, allow_nan=False))
    elif kind == "non-finite":
        detail = (draw(st.integers(0, 10_000)), draw(st.sampled_from([np.nan, np.inf, -np.inf])))
    elif kind == "shape":
        detail = draw(st.sampled_from([(1, SIZE), (SIZE + 1,), (SIZE - 1,), (), (SIZE, 1), (0,)]))
    weight = draw(
        st.one_of(
            st.just(1_100.0),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-(10**13), 10**13),
        )
    )
    return kind, detail, weight


def corrupt(kind: str, detail: Any, honest: ModelArrays, sent: ModelArrays) -> ModelArrays:
    first = PARAMETERS
    bad = dict(honest)
    if kind == "scale":
        bad = {n: (sent[n] + (honest[n] - sent[n]) * detail).astype(np.float32) for n in sent}
    elif kind == "non-finite":
        index, value = detail
        name = list(sent)[index % len(sent)]
        array = honest[name].copy()
        array.flat[index % array.size] = value
        bad[name] = array
    elif kind == "shape":
        bad[first] = np.zeros(detail, np.float32)
    elif kind == "column":
        bad[first] = honest[first].reshape(-1, 1)
    elif kind == "dtype":
        bad[first] = honest[first].astype(np.float16)
    elif kind == "drop":
        bad.pop(first)
    elif kind == "extra":
        bad["extra"] = np.ones(2, np.float32)
    return bad


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruptions())
def test_a_randomly_corrupted_reply_is_rejected_or_bounded(
    corruption: tuple[str, Any, Any],
) -> None:
    kind, detail, weight = corruption
    honest_weights = {"c1": 1_000.0, "c2": 1_500.0, "c3": 800.0, "c4": 1_200.0}
    sent = sent_model()
    models = honest_models(sent, honest_weights)
    config = FederationSettings(hidden_sizes=HIDDEN, min_clinics=3)
    strategy = strategy_for(config, sent)
    replies = [
        clinic_reply(node, clinic, models[clinic], honest_weights[clinic])
        for node, clinic in enumerate(honest_weights, start=1)
    ]
    replies.append(clinic_reply(5, "c5", corrupt(kind, detail, models["c1"], sent), weight))

    global_model = aggregate(strategy, replies)

    bad = next(r for r in strategy.history.rounds[-1].results if r.clinic_id == "c5")
    assert all(np.isfinite(value).all() for value in global_model.values())
    honest = weighted_mean(models, honest_weights)
    if bad.status == "rejected":
        assert bad.reason
        assert distance(global_model, honest) < 1e-5
    else:
        assert bad.status == "ok" and 0 < float(weight) <= config.max_clinic_weight
        share = float(weight) / (sum(honest_weights.values()) + float(weight))
        largest = max(update_norm(m, sent) for m in models.values())
        bound = config.update_norm_bound * (1 + 1e-5)  # float32 rounding of the clipped model
        assert distance(global_model, honest) <= share * (bound + largest) + 1e-5
