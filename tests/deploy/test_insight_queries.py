"""The library behind ``oralfed insights``: clinics to ask, query settings, runs, the API.

Flower is replaced by the clinics' own query code run in this process (the transport is
the only difference, see ``deploy/local_clinics.py``); the real simulation is exercised by
tests/e2e/test_insights_simulation.py. Every test runs from an empty working directory with
its own ``ORALFED_HOME``, so a default that leaned on either would show.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from oralfed.deploy import insight_queries
from oralfed.deploy.clinic_sources import ClinicSource, clinic_nodes
from oralfed.deploy.errors import FederationStopped, RunFolderError
from oralfed.deploy.insight_queries import query_settings, run_deployed_query, run_simulated_query
from oralfed.deploy.insights_service import API_LOG_FILE, create_api_token, local_insights_api
from oralfed.deploy.local_clinics import answer_in_process
from oralfed.deploy.simulation import QUERY_APP, SimulationResult
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.query import parse_query
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.insights import ANSWER_FILE, QuerySettings, SuppressionPolicy, run_and_record
from oralfed.server.insights_api import TokenError
from oralfed.server.insights_api import log as api_log
from tests.conftest import WriteCsv, good_rows

QUERY = {"measure": "proportion", "column": "untreated_caries", "epsilon": 1.0}
SPEC = parse_query(QUERY)
POLICY = SuppressionPolicy()
TWO_CLINICS = ClinicSource(clinics=2)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state root of the test's own, and an empty working directory nothing may touch."""
    root = tmp_path / "home"
    monkeypatch.setenv("ORALFED_HOME", str(root))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    yield root
    assert not any((tmp_path / "cwd").iterdir()), "something was written to the working dir"


def answer_here(clinics: list[ClinicNode], settings: QuerySettings) -> dict[str, Any]:
    """What the query ServerApp does with its settings, minus Flower: answer and record."""
    answer = run_and_record(
        lambda: answer_in_process(clinics, settings.spec, settings.policy, settings.requester),
        settings.coordinator_db,
    )
    return json.loads(json.dumps(answer.to_dict()))  # as it comes through the event pipe


def charges(state_dir: Path, clinic: str) -> int:
    with PrivacyLedger.in_state_dir(state_dir / clinic) as ledger:
        return len(ledger.history(clinic))


def test_synthetic_clinics_and_their_ledgers_live_in_the_query_folder(tmp_path: Path) -> None:
    lines: list[str] = []
    nodes = clinic_nodes(TWO_CLINICS, Path("../query"), lines.append)
    folder = tmp_path / "query"
    assert [n.clinic_id for n in nodes] == ["clinic-01", "clinic-02"]
    assert all(n.data_path.is_absolute() and n.data_path.parent == folder / "data" for n in nodes)
    assert [n.state_dir for n in nodes] == [folder / "state" / n.clinic_id for n in nodes]
    assert lines == [f"Synthesized 2 clinics in {folder / 'data'} (seed 7)"]


def test_clinic_files_keep_their_ledgers_under_the_state_root(tmp_path: Path, home: Path) -> None:
    data = tmp_path / "clinics"
    data.mkdir()
    (data / "north.csv").write_text("")
    (data / "notes.txt").write_text("not a clinic")
    [node] = clinic_nodes(ClinicSource(data=data), tmp_path / "query")
    assert (node.clinic_id, node.state_dir) == ("north", home / "clinics" / "north")
    [chosen] = clinic_nodes(ClinicSource(data=data, state_dir=tmp_path / "s"), tmp_path / "q")
    assert chosen.state_dir == tmp_path / "s" / "north"
    assert not (tmp_path / "query").exists()  # files are asked where they are


def test_a_folder_without_clinic_files_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    with pytest.raises(RunFolderError, match="no clinic files"):
        run_simulated_query(SPEC, POLICY, ClinicSource(data=tmp_path), tmp_path / "query")
    assert not (tmp_path / "query").exists()


def test_the_settings_carry_the_query_and_floors_to_either_server_app(tmp_path: Path) -> None:
    spec = parse_query({**QUERY, "group_by": ["smoking_status"]})
    policy = SuppressionPolicy(cell_floor=20, clinic_min_records=12)
    settings = query_settings(spec, policy, Path("db.sqlite"), out_dir=tmp_path / "q")
    deployed = QuerySettings.from_run_config(settings.run_config())  # as on the coordinator
    for received in (QuerySettings(**settings.public_dict()), deployed):  # and in a simulation
        assert (received.spec, received.policy) == (spec, policy)
        assert received.coordinator_db == f"sqlite:///{tmp_path / 'cwd' / 'db.sqlite'}"
        assert received.out_dir == str(tmp_path / "q")
    assert query_settings(spec, policy).coordinator_db is None  # the coordinator's default


def simulate_here(
    clinics: list[ClinicNode],
    settings_json: dict[str, Any],
    out_dir: Path,
    on_event: Any,
    app: str,
) -> SimulationResult:
    """``launch_simulation`` for a query, minus Flower: the ServerApp's settings, answered
    by the clinics' own code here, the answer sent as the simulation's event."""
    settings = QuerySettings(**settings_json)
    assert app == QUERY_APP and settings.expected_clinics == len(clinics)
    out_dir.mkdir(parents=True, exist_ok=True)  # the simulation makes its folder
    on_event({"event": "answer", "answer": answer_here(clinics, settings)})
    return SimulationResult("local", "completed", None, [])


def test_a_simulated_query_is_answered_charged_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(insight_queries, "launch_simulation", simulate_here)
    out = tmp_path / "query"
    run = run_simulated_query(SPEC, POLICY, TWO_CLINICS, out)
    assert sorted(p["clinic"] for p in run.answer["participants"]) == ["clinic-01", "clinic-02"]
    assert [charges(out / "state", c) for c in ("clinic-01", "clinic-02")] == [1, 1]
    assert run.coordinator_db == out / "coordinator.db"
    store = CoordinatorStore(f"sqlite:///{run.coordinator_db}")
    assert [row.query_id for row in store.queries()] == [run.answer["query_id"]]
    store.close()


def test_a_simulation_that_gives_no_answer_is_a_stopped_federation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        insight_queries,
        "launch_simulation",
        lambda *args, **kwargs: SimulationResult(None, "failed", "Ray did not start", []),
    )
    with pytest.raises(FederationStopped, match="did not complete: Ray did not start"):
        run_simulated_query(SPEC, POLICY, TWO_CLINICS, tmp_path / "query")


def test_a_deployed_query_records_in_the_coordinators_own_database_by_default(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clinics = clinic_nodes(TWO_CLINICS, tmp_path / "clinics")

    def deployed(fed_dir: Path, settings: QuerySettings, on_line: Any) -> dict[str, Any]:
        assert fed_dir == tmp_path / "fed"
        received = QuerySettings.from_run_config(settings.run_config())
        answer = answer_here(clinics, received)
        out_dir = Path(str(received.out_dir))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ANSWER_FILE).write_text(json.dumps(answer))
        return answer

    monkeypatch.setattr(insight_queries, "launch_query", deployed)
    out = tmp_path / "query"
    answer = run_deployed_query(tmp_path / "fed", SPEC, POLICY, out)
    assert json.loads((out / ANSWER_FILE).read_text()) == answer
    store = CoordinatorStore(f"sqlite:///{home / 'coordinator' / 'coordinator.db'}")
    assert [row.query_id for row in store.queries()] == [answer["query_id"]]
    store.close()


def test_tokens_default_to_the_coordinator_database_under_the_state_root(home: Path) -> None:
    assert create_api_token("alice", 2.0).startswith("ofi_")
    assert (home / "coordinator" / "coordinator.db").is_file()
    with pytest.raises(TokenError, match="already exists"):
        create_api_token("alice", 1.0)


@pytest.fixture
def api_log_handlers() -> Iterator[None]:
    """The API's request log handlers a test adds are closed and removed after it."""
    before = list(api_log.handlers)
    yield
    for handler in [h for h in api_log.handlers if h not in before]:
        api_log.removeHandler(handler)
        handler.close()


@pytest.mark.usefixtures("api_log_handlers")
def test_the_local_api_answers_with_the_clinics_on_this_host(home: Path) -> None:
    token = create_api_token("alice", 5.0)
    lines: list[str] = []
    app = local_insights_api(TWO_CLINICS, notify=lines.append)
    local_insights_api(TWO_CLINICS)  # built again for the same folder: the log is not doubled
    folder = home / "insights"
    response = TestClient(app).post(
        "/v1/queries", json=QUERY, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["requester"] == "alice"
    assert [charges(folder / "state", c) for c in ("clinic-01", "clinic-02")] == [1, 1]
    log = (folder / API_LOG_FILE).read_text()
    assert log.count("POST /v1/queries -> 200") == 1
    assert lines[-1] == f"Requests are logged to {folder / API_LOG_FILE}"


@pytest.mark.usefixtures("api_log_handlers")
def test_the_local_api_reads_clinic_files_where_they_are(
    tmp_path: Path, home: Path, write_csv: WriteCsv
) -> None:
    data = write_csv(good_rows(150), name="north.csv").parent
    token = create_api_token("bob", 5.0)
    app = local_insights_api(ClinicSource(data=data), tmp_path / "api")
    response = TestClient(app).post(
        "/v1/queries", json=QUERY, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    assert charges(home / "clinics", "north") == 1
    assert not (tmp_path / "api" / "data").exists()
