"""Insights once the clinics' budgets are spent, or a clinic breaks: a refusal, never a crash.

Every clinic refusing is the normal state of a federation whose caps are reached. Before,
5 of the 6 measures then answered HTTP 500 (``cannot reshape array of size 0``) and
``oralfed insights query`` hit the same code; one clinic's missing file in an in-process
query left the clinics asked before it charged, with no answer for anyone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from oralfed.client import query as clinic_query
from oralfed.deploy import insight_queries
from oralfed.deploy.local_clinics import answer_in_process
from oralfed.privacy.mechanisms import NoiseCalibration
from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.query import parse_query
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.insights import SuppressionPolicy
from oralfed.server.insights_api import create_token
from tests.adversarial import test_insights_channels as channels
from tests.conftest import WriteCsv, good_rows, run_cli
from tests.deploy.test_insight_queries import simulate_here

# The channel tests' fixtures: a real SQLite coordinator database and two clinics.
store, clinics, exhausted = channels.store, channels.clinics, channels.exhausted

# One query per measure; Laplace noise needs no accountant search, so the six stay quick.
MEASURES: dict[str, dict[str, Any]] = {
    "count": {"measure": "count"},
    "sum": {"measure": "sum", "column": "dmft"},
    "mean": {"measure": "mean", "column": "sugary_drinks_per_day"},
    "proportion": {"measure": "proportion", "column": "untreated_caries"},
    "histogram": {"measure": "histogram", "column": "age_years", "bins": 5},
    "quantile": {"measure": "quantile", "column": "dmft", "quantiles": [0.5, 0.9]},
}


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_every_measure_refused_by_every_clinic_is_a_409_with_each_refusal(
    store: CoordinatorStore, exhausted: list[ClinicNode], measure: str
) -> None:
    client = channels.api_client(store, exhausted, create_token(store, "mallory", epsilon_cap=5.0))
    query = {**MEASURES[measure], "epsilon": 0.5, "mechanism": "laplace"}
    response = client.post("/v1/queries", json=query)
    assert response.status_code == 409, response.text
    body = response.json()
    assert "no clinic answered" in body["error"]
    assert [r["clinic"] for r in body["refusals"]] == ["east", "west"]
    for refusal in body["refusals"]:
        assert refusal["code"] == protocol.ERROR_BUDGET_EXCEEDED
        assert "would bring ε" in refusal["reason"] and refusal["charged"] is False
        assert f"{refusal['clinic']}: {refusal['reason']}" in body["error"]
    assert body["charged_clinics"] == []
    status = client.get("/v1/token").json()
    assert (status["epsilon_spent"], status["queries_charged"]) == (0.0, 0)
    assert channels.clinic_charges(exhausted) == [0, 0]
    [recorded] = store.queries("mallory")  # the refused query is on record all the same
    assert recorded.answer["participants"] == []


def test_a_missing_clinic_file_refuses_that_clinic_before_any_clinic_is_charged(
    clinics: list[ClinicNode], tmp_path: Path
) -> None:
    """The file is checked before anyone is asked; the others answer and are charged once."""
    gone = ClinicNode("gone", tmp_path / "gone.csv", tmp_path / "gone", "gone")
    spec = parse_query({**MEASURES["proportion"], "epsilon": 0.5, "mechanism": "laplace"})
    answer = answer_in_process([clinics[0], gone, clinics[1]], spec, SuppressionPolicy())
    assert [p["clinic"] for p in answer.participants] == ["north", "south"]
    [refusal] = answer.refusals
    assert refusal["clinic"] == "gone" and refusal["charged"] is False
    assert "does not exist; not asked, nothing was charged" in refusal["reason"]
    assert channels.clinic_charges(clinics) == [1, 1]
    assert not (tmp_path / "gone").exists()  # no ledger was made for the refused clinic


def test_clinics_that_fail_after_paying_are_named_as_charged(
    store: CoordinatorStore,
    clinics: list[ClinicNode],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clinic whose code fails after its charge (here its release step breaks) is that
    clinic's refusal, saying it was charged; the 409 lists the clinics charged for nothing,
    and the token pays nothing."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full while computing the release")

    monkeypatch.setattr(clinic_query, "local_release", broken)
    client = channels.api_client(store, clinics, create_token(store, "mallory", epsilon_cap=5.0))
    response = client.post("/v1/queries", json={**MEASURES["count"], "epsilon": 0.5})
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["charged_clinics"] == ["north", "south"]
    assert "Charged without an answer: north, south" in body["error"]
    for refusal in body["refusals"]:
        assert "RuntimeError: disk full" in refusal["reason"]
        assert "charged for this query all the same" in refusal["reason"]
    assert channels.clinic_charges(clinics) == [1, 1]
    assert client.get("/v1/token").json()["queries_charged"] == 0


def test_insights_query_on_an_exhausted_federation_names_every_refusal(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    write_csv: WriteCsv,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second ε = 6 query passes both clinics' lifetime cap of 10: the command prints
    each clinic's refusal and exits with the budget code, no traceback."""
    monkeypatch.setattr(insight_queries, "launch_simulation", simulate_here)
    data = tmp_path / "clinics"
    data.mkdir()
    for name in ("east", "west"):
        write_csv(good_rows(150), name=f"clinics/{name}.csv")
    args = [
        "insights", "query", "--measure", "count", "--epsilon", "6", "--mechanism", "laplace",
        "--data", data, "--state-dir", tmp_path / "state",
    ]  # fmt: skip
    code, out, err = run_cli(capsys, *args, "--out", tmp_path / "first")
    assert code == 0, err
    code, out, err = run_cli(capsys, *args, "--out", tmp_path / "second")
    assert code == ExitCode.BUDGET_EXCEEDED, (out, err)
    assert "no clinic answered" in err and "Traceback" not in out + err
    flat = " ".join(err.split())
    assert flat.count("would bring ε") == 2
    assert "east: " in flat and "west: " in flat


def test_an_answer_with_less_noise_than_honest_clinics_add_is_withheld_not_overspent(
    store: CoordinatorStore, clinics: list[ClinicNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap is checked with the least noise any honest clinic adds. Clinics that add half
    of it (and charge that) produce an answer worth ε ≈ 1 to a token capped at 0.6: it is
    withheld, and the token is charged nothing, rather than end above its cap."""
    honest = clinic_query.calibrate

    def stingy(*args: Any, **kwargs: Any) -> NoiseCalibration:
        calibration = honest(*args, **kwargs)
        return replace(calibration, noise_multiplier=calibration.noise_multiplier / 2)

    monkeypatch.setattr(clinic_query, "calibrate", stingy)
    client = channels.api_client(store, clinics, create_token(store, "mallory", epsilon_cap=0.6))
    response = client.post("/v1/queries", json={**MEASURES["count"], "epsilon": 0.5})
    assert response.status_code == 409, response.text
    assert "the answer is withheld" in response.json()["error"]
    assert "charged clinics: north, south" in response.json()["error"]
    assert client.get("/v1/token").json()["queries_charged"] == 0
