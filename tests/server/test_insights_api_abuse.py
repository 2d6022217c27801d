"""The insights API under hostile request bodies: never a 5xx, and a refusal spends nothing.

Against the real app (FastAPI TestClient), a real SQLite coordinator database and clinics
answering in this process with their own code (the fixtures of
tests/adversarial/test_insights_channels.py). Before this, a non-integer ``max_cells``,
deeply nested JSON and an ε such as 5e-324 all came back as 500s.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from oralfed.privacy.events import PrivacyEvent
from oralfed.privacy.mechanisms import calibrate
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.query import (
    MAX_QUERY_DELTA,
    MAX_QUERY_EPSILON,
    MIN_QUERY_DELTA,
    MIN_QUERY_EPSILON,
    QueryError,
    parse_query,
)
from oralfed.schemas.query_messages import ClinicAnswer
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.insights import SuppressionPolicy, build_answer
from oralfed.server.insights_api import MAX_BODY_BYTES, MAX_JSON_DEPTH, create_token, load_token
from tests.adversarial import test_insights_channels as channels

# The channel tests' fixtures: a real SQLite coordinator database and two clinics.
store, clinics = channels.store, channels.clinics

# JSON values of every kind: huge and tiny numbers, NaN and Infinity (json.dumps writes them),
# strings that look like numbers, nesting.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**400, -(10**400)]),  # past float64; longer ones are raw bodies below
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e-324, 1e-300, 1e308, 0.0, -0.0, 1.5, 64.0]),
    st.sampled_from(["NaN", "Infinity", "-1", "1e-324", "0.5", "", "gaussian", "count"]),
    st.text(max_size=20),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Good values of the query's fields. A body is a good query, then usually one field
# replaced by any JSON value, so that many bodies get far into validation and some all the
# way to the clinics (ε = 1 and the default δ only: each distinct (ε, δ) is a calibration).
_GOOD: dict[str, st.SearchStrategy[Any]] = {
    "column": st.sampled_from(["dmft", "untreated_caries", "age_years"]),
    "group_by": st.lists(st.sampled_from(["sex", "age_band", "diabetes"]), max_size=2),
    "mechanism": st.sampled_from(["gaussian", "laplace"]),
    "bins": st.sampled_from([2, 10, 200]),
    "quantiles": st.lists(st.sampled_from([0.5, 0.25, 0.9]), min_size=1, max_size=3),
    "max_cells": st.sampled_from([12, 64, 5000]),
}
_FIELDS = ["measure", "epsilon", "delta", "value", *_GOOD]


@st.composite
def _query_bodies(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {
                "measure": st.sampled_from(["count", "mean", "proportion", "quantile"]),
                "epsilon": st.just(1.0),
            },
            optional=_GOOD,
        )
    )
    if draw(st.integers(0, 3)):  # three times in four, one hostile field
        body[draw(st.sampled_from(_FIELDS))] = draw(_JSON)
    return json.dumps(body).encode()


_RAW_BODIES = st.one_of(
    _JSON.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
    st.integers(min_value=MAX_JSON_DEPTH, max_value=50_000).map(
        lambda depth: b'{"epsilon":' + b"[" * depth + b"]" * depth + b"}"
    ),
    st.sampled_from([b"", b"{", b'{"epsilon": NaN}', b'{"a": 1' + b"0" * 5000 + b"}"]),
)


def _history(store: CoordinatorStore, token: str) -> tuple[PrivacyEvent, ...]:
    """The token's charged releases (its ε is a function of them alone)."""
    return load_token(store, token.partition(".")[0].removeprefix("ofi_")).events


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.one_of(_query_bodies(), _RAW_BODIES))
def test_no_request_body_gets_a_5xx_and_a_refused_one_spends_nothing(
    store: CoordinatorStore, clinics: list[ClinicNode], body: bytes
) -> None:
    token = _token(store)
    client = channels.api_client(store, clinics, token)
    history, before = _history(store, token), channels.clinic_charges(clinics)
    response = client.post("/v1/queries", content=body)
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, (body[:200], response.text)
    if response.status_code == 200:
        assert len(_history(store, token)) == len(history) + 1
        assert response.json()["token"]["epsilon_spent"] <= 3.0 + 1e-9  # the cap holds
    else:
        assert "error" in response.json()
        assert _history(store, token) == history  # the token spent nothing
        assert channels.clinic_charges(clinics) == before  # and no clinic paid for the refusal


def _token(store: CoordinatorStore) -> str:
    """One token per database, created on first use (hypothesis reuses the fixtures)."""
    cached = _TOKENS.get(str(store.engine.url))
    if cached is None:
        cached = _TOKENS[str(store.engine.url)] = create_token(store, "eve", epsilon_cap=3.0)
    return cached


_TOKENS: dict[str, str] = {}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"measure": "count", "epsilon": 1, "max_cells": "many"}', 400, "max_cells"),
        (b'{"measure": "count", "epsilon": 1, "max_cells": 1.5}', 400, "max_cells"),
        (b'{"measure": "count", "epsilon": 1, "max_cells": null}', 400, "max_cells"),
        (b'{"measure": "count", "epsilon": 5e-324}', 400, "epsilon"),
        (b'{"measure": "count", "epsilon": 1, "delta": 5e-324}', 400, "delta"),
        (b'{"measure": "count", "epsilon": "1"}', 400, "epsilon"),
        (b'{"measure": "count", "epsilon": true}', 400, "epsilon"),
        (b'{"measure": "count", "epsilon": NaN}', 400, "NaN is not a JSON number"),
        (b'{"measure": "count", "epsilon": 1e400}', 400, "epsilon: Input should be a finite"),
        (b'{"measure": "count", "epsilon": 1, "bins": 2.5}', 400, "bins"),
        (b'{"measure": "count", "epsilon": 1, "group_by": "sex"}', 400, "group_by"),
        (b'{"measure": "count", "epsilon": 1, "group_by": [["sex"]]}', 400, "group_by.0"),
        (
            b'{"measure": "quantile", "column": "dmft", "epsilon": 1, "quantiles": []}',
            400,
            "quantiles",
        ),
        (b'{"measure": "count", "epsilon": 1' + b"0" * 5000 + b"}", 400, "malformed JSON body"),
        (b"[" * 100_000 + b"]" * 100_000, 413, "larger than"),
        (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested deeper"),
        (b'{"a": "' + b"[" * 5000 + b'"}', 400, "a: Extra inputs"),  # brackets in a string
        (b'{"measure": "count", "epsilon": 1, "column": "\xff"}', 400, "not UTF-8"),
    ],
)
def test_each_hostile_field_is_named_in_a_4xx(
    store: CoordinatorStore, clinics: list[ClinicNode], body: bytes, status: int, field: str
) -> None:
    client = channels.api_client(store, clinics, _token(store))
    response = client.post("/v1/queries", content=body)
    assert response.status_code == status, response.text
    assert field in response.json()["error"]
    assert store.queries() == []


def test_a_declared_length_past_the_limit_is_refused_before_the_body_is_read(
    store: CoordinatorStore, clinics: list[ClinicNode]
) -> None:
    client = channels.api_client(store, clinics, _token(store))
    response = client.post(
        "/v1/queries", content=b"{}", headers={"Content-Length": str(MAX_BODY_BYTES + 1)}
    )
    assert response.status_code == 413, response.text


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
@pytest.mark.parametrize("epsilon", [MIN_QUERY_EPSILON, MAX_QUERY_EPSILON])
@pytest.mark.parametrize("delta", [MIN_QUERY_DELTA, MAX_QUERY_DELTA])
def test_every_accepted_epsilon_and_delta_can_be_calibrated(
    accountant: str, mechanism: str, epsilon: float, delta: float
) -> None:
    """The range's corners, with two releases (the most noise for the least ε): every
    accountant a clinic or a token may count with finds noise for them."""
    calibration = calibrate(mechanism, epsilon, delta, 2, accountant)
    assert math.isfinite(calibration.count_noise_sd) and calibration.event.count == 2
    spec = parse_query({"measure": "mean", "column": "dmft", "epsilon": epsilon, "delta": delta})
    assert (spec.epsilon, spec.delta) == (epsilon, delta)


@pytest.mark.parametrize(
    "values",
    [
        {"epsilon": MIN_QUERY_EPSILON * (1 - 1e-9)},
        {"epsilon": math.nextafter(MAX_QUERY_EPSILON, math.inf)},
        {"epsilon": 1.0, "delta": MIN_QUERY_DELTA * (1 - 1e-9)},
        {"epsilon": 1.0, "delta": math.nextafter(MAX_QUERY_DELTA, 1.0)},
    ],
)
def test_just_outside_the_range_is_refused(values: dict[str, float]) -> None:
    with pytest.raises(QueryError, match=r"^(epsilon|delta): "):
        parse_query({"measure": "count", **values})


def _answer(
    clinic: str, counts: list[float], statistic: list[float], sd: float = 1.0
) -> ClinicAnswer:
    return ClinicAnswer(clinic, counts, sd, statistic, sd, 2.0, 1.0, 10.0, 1e-6, "pld")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_answer("bad", [100.0, 100.0], [50.0]), "2 noisy counts for a query of 1 cells"),
        (_answer("bad", [100.0], []), "0 noisy statistics where the query makes 1"),
        (_answer("bad", [math.nan], [50.0]), "not a finite number"),
        (_answer("bad", [100.0], [math.inf]), "not a finite number"),
        (_answer("bad", [100.0], [50.0], sd=0.0), "noise scale that is not positive"),
        (_answer("good", [100.0], [50.0]), "a second answer under this clinic's name"),
    ],
)
def test_an_answer_that_cannot_be_combined_is_a_refusal_naming_its_clinic(
    bad: ClinicAnswer, reason: str
) -> None:
    """Before, an answer of another shape crashed the combination (a 500) and a NaN made
    every cell NaN. Now it is left out, and the answer says which clinic and why."""
    spec = parse_query({"measure": "mean", "column": "dmft", "epsilon": 1.0})
    good = _answer("good", [100.0], [50.0])
    answer = build_answer(spec, SuppressionPolicy(), [good, bad], 0.0)
    assert [p["clinic"] for p in answer.participants] == ["good"]
    [refusal] = answer.refusals
    assert refusal["clinic"] == bad.clinic_id and reason in refusal["reason"]
    assert refusal["charged"] is True
    assert answer.cells[0].value is not None and answer.cells[0].value.value == 0.5
