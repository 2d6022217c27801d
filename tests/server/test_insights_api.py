"""The insights HTTP API through a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from oralfed.deploy.local_clinics import answer_in_process
from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.events import GaussianEvent
from oralfed.privacy.mechanisms import calibrate
from oralfed.schemas.features import Task
from oralfed.schemas.model import build_model, save_model
from oralfed.schemas.node_config import ClinicNode
from oralfed.server.coordinator_db import MIGRATIONS, CoordinatorStore
from oralfed.server.insights_api import (
    ApiTokenRow,
    TokenError,
    authenticate,
    create_app,
    create_token,
    load_token,
)
from oralfed.server.model_insights import PUBLIC_DECLARATION, PrivateReferenceError
from tests.conftest import GOOD_ROW, WriteCsv

QUERY = {"measure": "proportion", "column": "untreated_caries", "epsilon": 0.5}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Api:
    def __init__(
        self,
        url: str,
        token: str,
        store: CoordinatorStore,
        clinics: list[ClinicNode],
        model_path: Path,
    ) -> None:
        self.url, self.token, self.store, self.clinics = url, token, store, clinics
        self.model_path = model_path

    def post(self, path: str, body: bytes | dict, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if isinstance(body, dict):
            return httpx.post(self.url + path, json=body, headers=headers, timeout=60)
        return httpx.post(self.url + path, content=body, headers=headers, timeout=60)


@pytest.fixture
def api(write_csv: WriteCsv, tmp_path: Path) -> Iterator[Api]:
    rows = [{**GOOD_ROW, "patient_ref": f"p-{i:04d}"} for i in range(150)]
    clinics = [
        ClinicNode(name, path, tmp_path / "state" / name, name)
        for name, path in (
            (name, write_csv(rows, name=f"{name}.csv")) for name in ("north", "south")
        )
    ]
    model_path = tmp_path / "model.pt"
    save_model(build_model(seed=1), model_path, Task.UNTREATED_CARIES, {})
    database = f"sqlite:///{tmp_path / 'coordinator.db'}"
    store = CoordinatorStore(database)
    token = create_token(store, "alice", epsilon_cap=1.0)
    app = create_app(
        store,
        lambda spec, policy, who: answer_in_process(clinics, spec, policy, who),
        database,
        model_path=model_path,
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield Api(f"http://127.0.0.1:{port}", token, store, clinics, model_path)
    server.should_exit = True
    thread.join(timeout=10)
    store.close()


def test_tokens_are_stored_hashed(api: Api) -> None:
    from sqlalchemy.orm import Session

    with Session(api.store.engine) as session:
        [row] = session.query(ApiTokenRow).all()
    secret = api.token.partition(".")[2]
    assert secret not in (row.secret_hash, row.salt, row.token_id)
    assert (row.epsilon_cap, row.delta, row.accountant, row.events) == (1.0, 1e-6, "pld", [])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epsilon_cap": 0.0}, "epsilon cap"),
        ({"epsilon_cap": float("inf")}, "epsilon cap"),
        ({"epsilon_cap": 1.0, "delta": 0.0}, "delta"),
        ({"epsilon_cap": 1.0, "delta": 0.01}, "delta"),
        ({"epsilon_cap": 1.0, "delta": 5e-324}, "delta"),  # no accountant's ε exists there
        ({"epsilon_cap": 1.0, "accountant": "abacus"}, "unknown accountant 'abacus'"),
    ],
)
def test_a_token_needs_a_usable_cap_delta_and_accountant(
    tmp_path: Path, options: dict, message: str
) -> None:
    store = CoordinatorStore(f"sqlite:///{tmp_path / 'coordinator.db'}")
    try:
        with pytest.raises(TokenError, match=message):
            create_token(store, "bob", **options)
    finally:
        store.close()


def test_a_query_round_trip_answers_and_spends_the_token_budget(api: Api) -> None:
    response = api.post("/v1/queries", QUERY)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["privacy"]["epsilon"] == 0.5 and answer["requester"] == "alice"
    assert sorted(p["clinic"] for p in answer["participants"]) == ["north", "south"]
    [cell] = answer["cells"]
    assert not cell["suppressed"]  # every test patient is caries-free: prevalence 0
    assert abs(cell["value"]["value"]) < 5 * cell["value"]["standard_error"]
    status = httpx.get(
        api.url + "/v1/token", headers={"Authorization": f"Bearer {api.token}"}
    ).json()
    event = calibrate("gaussian", 0.5, 1e-6, 2).event  # the clinics' own calibration
    spent = get_accountant("pld").epsilon([event], 1e-6)
    assert status["epsilon_spent"] == pytest.approx(spent, rel=1e-9)
    assert 0.49 <= status["epsilon_spent"] <= 0.5  # one query: its ε, to the 1 % calibration
    assert status["epsilon_left"] == pytest.approx(1.0 - spent, rel=1e-9)
    assert (status["delta"], status["accountant"], status["queries_charged"]) == (1e-6, "pld", 1)
    assert answer["token"] == status


def test_the_token_cap_refuses_before_any_clinic_is_asked(api: Api) -> None:
    assert api.post("/v1/queries", {**QUERY, "epsilon": 0.8}).status_code == 200
    refused = api.post("/v1/queries", {**QUERY, "epsilon": 0.9})  # composed: ε ≈ 1.23 > 1
    assert refused.status_code == 409
    assert "token budget" in refused.json()["error"]
    assert "Nothing was spent" in refused.json()["error"]
    assert len(api.store.queries("alice")) == 1  # nothing new recorded, nothing charged
    token = authenticate(api.store, f"Bearer {api.token}")
    assert token is not None and len(token.events) == 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON body"),
        (b"[1, 2]", 400, "must be an object"),
        ({**QUERY, "column": "shoe_size"}, 400, "unknown column 'shoe_size'"),
        ({**QUERY, "group_by": ["bmi"]}, 400, "'bmi' is continuous"),
        ({**QUERY, "epsilon": 0}, 400, "epsilon: Input should be greater than or equal to 0.05"),
        ({**QUERY, "epsilon": -1}, 400, "epsilon"),
    ],
)
def test_bad_queries_get_a_4xx_and_spend_nothing(
    api: Api, body: bytes | dict, status: int, message: str
) -> None:
    response = api.post("/v1/queries", body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert api.store.queries() == []


@pytest.mark.parametrize("token", ["", "ofi_0000.wrong", "garbage"])
def test_missing_or_wrong_tokens_are_refused(api: Api, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(api.url + "/v1/queries", json=QUERY, headers=headers, timeout=30)
    assert response.status_code == 401
    wrong_secret = api.token.partition(".")[0] + ".not-the-secret"
    assert api.post("/v1/queries", QUERY, token=wrong_secret).status_code == 401
    assert api.store.queries() == []


def test_risk_and_effects_and_the_openapi_description(api: Api) -> None:
    risk = api.post("/v1/risk", {"age_years": 40, "smoking_status": "current"})
    assert risk.status_code == 200 and 0 < risk.json()["risk"] < 1
    bad = api.post("/v1/risk", {"age_years": 400})
    assert bad.status_code == 400 and "age_years" in bad.json()["error"]
    effects = httpx.get(
        api.url + "/v1/effects", headers={"Authorization": f"Bearer {api.token}"}, timeout=60
    )
    assert effects.status_code == 200
    reference = effects.json()["reference"]
    assert reference["kind"] == "synthetic" and reference["patients"] > 150
    schema = httpx.get(api.url + "/openapi.json").json()
    assert {"/v1/queries", "/v1/risk", "/v1/effects", "/v1/token"} <= set(schema["paths"])


def test_effects_use_a_file_only_when_the_operator_declares_it_public(api: Api) -> None:
    def app(reference: Path, reference_is_public: bool) -> FastAPI:
        return create_app(
            api.store,
            lambda spec, policy, who: answer_in_process(api.clinics, spec, policy, who),
            None,
            model_path=api.model_path,
            reference=reference,
            reference_is_public=reference_is_public,
        )

    private = api.clinics[0].data_path
    with pytest.raises(PrivateReferenceError, match="declared public"):
        app(private, reference_is_public=False)
    client = TestClient(app(private, reference_is_public=True))
    response = client.get("/v1/effects", headers={"Authorization": f"Bearer {api.token}"})
    assert response.status_code == 200, response.text
    assert response.json()["reference"] == {
        "kind": "public",
        "source": str(private),
        "patients": 150,
        "declaration": PUBLIC_DECLARATION,
    }


def test_the_migration_rebuilds_token_histories_from_answered_queries(tmp_path: Path) -> None:
    """Tokens made before histories existed keep what they spent (answered queries only)."""
    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        connection.execute(
            text(
                "INSERT INTO coordinator_api_tokens VALUES "
                "('t1', 'carol', '00', 'hash', 2.0, '2025-01-01 00:00:00')"
            )
        )
        for query_id, measure, participants in (
            ("q1", "proportion", [{"noise_multiplier": 9.0}, {"noise_multiplier": 7.5}]),
            ("q2", "count", []),  # every clinic refused: nothing was released
            ("q3", "count", [{"noise_multiplier": 4.0}]),
        ):
            answer = {
                "query": {"measure": measure, "mechanism": "gaussian", "epsilon": 0.5},
                "participants": participants,
            }
            connection.execute(
                text("INSERT INTO coordinator_queries VALUES (:id, :at, 'carol', 0.5, :answer)"),
                {
                    "id": query_id,
                    "at": f"2025-01-0{query_id[1]} 00:00:00",
                    "answer": json.dumps(answer),
                },
            )
    engine.dispose()
    store = CoordinatorStore(url)  # upgrades to the newest revision
    try:
        token = load_token(store, "t1")
    finally:
        store.close()
    assert (token.delta, token.accountant) == (1e-6, "pld")
    assert token.events == (GaussianEvent(7.5, 2), GaussianEvent(4.0, 1))
