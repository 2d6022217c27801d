"""Side channels of the insights commands and API that let answers cost less than they reveal.

Each test is an attack that worked before the fix: habit effects over a clinic's own file
differenced down to one patient's predicted risk; a token capped by the sum of its queries'
ε (basic composition, δ ignored) instead of the accountant's ε at its δ; and a query no
clinic answered that still used up the token's budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from oralfed.deploy.local_clinics import answer_in_process
from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.ledger import LEDGER_FILE, PrivacyLedger, UnknownDataset
from oralfed.privacy.mechanisms import calibrate
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.features import Task
from oralfed.schemas.model import build_model, save_model
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.query import DEFAULT_QUERY_DELTA
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.insights_api import create_app, create_token
from tests.conftest import GOOD_ROW, WriteCsv, good_rows, run_cli

SMALL_QUERY = {"measure": "proportion", "column": "untreated_caries", "epsilon": 0.1}


def test_differencing_effects_over_a_private_reference_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, write_csv: WriteCsv
) -> None:
    """Two files differing by one patient: exact means times exact counts, subtracted, were
    that patient's predicted risk. Neither answer may be given for a file not declared
    public, and the API refuses to start with one."""
    model = tmp_path / "model.pt"
    save_model(build_model(seed=1), model, Task.UNTREATED_CARIES, {})
    rows = good_rows(150)
    target = {**GOOD_ROW, "patient_ref": "target", "smoking_status": "current", "age_years": "67"}
    without = write_csv(rows, name="without.csv")
    with_target = write_csv([*rows, target], name="with.csv")
    for reference in (without, with_target):
        code, out, err = run_cli(
            capsys, "insights", "effects", "--model", model, "--reference", reference, "--json"
        )
        assert code == ExitCode.USAGE, out
        assert out == ""  # no mean, no count
        assert "declared public" in err and "--reference-is-public" in err
    store = CoordinatorStore(f"sqlite:///{tmp_path / 'coordinator.db'}")
    try:
        with pytest.raises(ValueError, match="declared public"):
            create_app(
                store,
                lambda spec, policy, who: answer_in_process([], spec, policy, who),
                None,
                model_path=model,
                reference=with_target,
            )
    finally:
        store.close()
    code, out, _ = run_cli(capsys, "insights", "effects", "--model", model, "--json")
    assert code == 0 and '"kind": "synthetic"' in out and "with.csv" not in out


@pytest.fixture
def clinics(tmp_path: Path, write_csv: WriteCsv) -> list[ClinicNode]:
    return [
        ClinicNode(name, write_csv(good_rows(150), name=f"{name}.csv"), tmp_path / name, name)
        for name in ("north", "south")
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CoordinatorStore]:
    opened = CoordinatorStore(f"sqlite:///{tmp_path / 'coordinator.db'}")
    yield opened
    opened.close()


def api_client(store: CoordinatorStore, clinics: list[ClinicNode], token: str) -> TestClient:
    app = create_app(
        store,
        lambda spec, policy, who: answer_in_process(clinics, spec, policy, who),
        str(store.engine.url),
    )
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def clinic_charges(clinics: list[ClinicNode]) -> list[int]:
    """Each clinic's number of charges; 0 for one never asked (no ledger is made to tell)."""
    counts = []
    for clinic in clinics:
        if not (clinic.state_dir / LEDGER_FILE).is_file():
            counts.append(0)
            continue
        with PrivacyLedger.in_state_dir(clinic.state_dir) as ledger:
            try:
                counts.append(len(ledger.history(clinic.dataset_id)))
            except UnknownDataset:
                counts.append(0)
    return counts


def test_token_spend_is_the_accountants_epsilon_at_delta_and_the_cap_holds(
    store: CoordinatorStore, clinics: list[ClinicNode]
) -> None:
    """Ten ε = 0.1 queries cost the PLD accountant's ε of their ten events at the token's δ,
    about a third of their sum; a basic-composition cap of 0.35 stopped them at three."""
    client = api_client(store, clinics, create_token(store, "mallory", epsilon_cap=0.35))
    event = calibrate("gaussian", 0.1, DEFAULT_QUERY_DELTA, 2).event  # what each clinic adds
    accountant = get_accountant("pld")
    for answered in range(1, 11):
        response = client.post("/v1/queries", json=SMALL_QUERY)
        assert response.status_code == 200, response.text
        spent = client.get("/v1/token").json()["epsilon_spent"]
        expected = accountant.epsilon([event] * answered, DEFAULT_QUERY_DELTA)
        assert spent == pytest.approx(expected, rel=1e-9)
    basic = 10 * SMALL_QUERY["epsilon"]
    assert spent < basic / 2
    before = clinic_charges(clinics)
    refused = client.post("/v1/queries", json=SMALL_QUERY)  # ε of eleven events > 0.35
    assert refused.status_code == 409
    assert "Nothing was spent" in refused.json()["error"]
    assert client.get("/v1/token").json()["epsilon_spent"] == pytest.approx(spent, rel=1e-12)
    assert clinic_charges(clinics) == before == [10, 10]  # no clinic was asked


@pytest.fixture
def exhausted(tmp_path: Path, write_csv: WriteCsv) -> list[ClinicNode]:
    """Two clinics whose caps no query of ε = 0.5 fits."""
    return [
        ClinicNode(
            name,
            write_csv(good_rows(150), name=f"{name}.csv"),
            tmp_path / name,
            name,
            epsilon_cap=0.05,
        )
        for name in ("east", "west")
    ]


@pytest.mark.parametrize("measure", ["count", "proportion"])
def test_a_query_no_clinic_answered_spends_nothing_from_the_token(
    store: CoordinatorStore, exhausted: list[ClinicNode], measure: str
) -> None:
    """Every clinic's own cap refuses the query, or no clinic is connected: nothing was
    released, so the token owes nothing (a count was charged in full, a proportion crashed)."""
    token = create_token(store, "mallory", epsilon_cap=1.0)
    query = {**SMALL_QUERY, "measure": measure, "epsilon": 0.5}
    for clinics, reason in ((exhausted, "would bring ε"), ([], "no clinic connected")):
        client = api_client(store, clinics, token)
        for _ in range(2):
            response = client.post("/v1/queries", json=query)
            assert response.status_code == 409, response.text
            assert "no clinic answered" in response.json()["error"]
            assert reason in response.json()["error"]
    status = client.get("/v1/token").json()
    assert status["epsilon_spent"] == 0.0 and status["epsilon_left"] == 1.0
    assert clinic_charges(exhausted) == [0, 0]
