"""The dashboard's pages over real state dirs and run folders, through FastAPI's test client:
what each shows against the library's own figures, and who is let in (login, sessions,
CSRF, origin, security headers, the request log)."""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oralfed.deploy.dashboard import (
    ClinicSite,
    CoordinatorSite,
    create_clinic_token,
    create_dashboard,
)
from oralfed.deploy.dashboard.app import SECURITY_HEADERS
from oralfed.deploy.dashboard.sessions import LoginThrottle
from oralfed.deploy.dashboard.snapshots import FileSnapshots
from oralfed.deploy.dashboard.tokens import DASHBOARD_TOKENS_FILE, DashboardTokenError
from oralfed.deploy.local_clinics import answer_in_process
from oralfed.deploy.provisioning import add_clinic, init_federation
from oralfed.privacy.audit_log import ROUND_COMPLETED, AuditLog
from oralfed.privacy.audit_targets import verify_target
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.keys import load_or_create_signing_key
from oralfed.privacy.ledger import BudgetExceeded, PrivacyLedger
from oralfed.schemas.node_config import ClinicNode
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.history import ClinicResult, RoundRecord
from oralfed.server.insights import SuppressionPolicy
from oralfed.server.insights_api import CappedQueries, create_token
from tests.conftest import good_rows

ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A clinic state dir with two charges and one refused charge, and a dashboard token."""
    state_dir = tmp_path_factory.mktemp("clinic")
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=5.0, delta=1e-5)
        ledger.charge("clinic-01", ROUND, run_id="run-a", round=1)
        ledger.charge("clinic-01", ROUND, run_id="run-a", round=2)
        with pytest.raises(BudgetExceeded):
            ledger.charge("clinic-01", DpSgdEvent(0.6, 0.5, 2000), run_id="run-b", round=1)
    return state_dir, create_clinic_token(state_dir, "officer")


def logged_in(client: TestClient, token: str) -> TestClient:
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = client.post("/login", data={"csrf": csrf.group(1), "token": token})
    assert answer.status_code == 200 and answer.url.path == "/", answer.text
    return client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def test_a_clinic_page_shows_the_ledger_s_own_figures(clinic: tuple[Path, str]) -> None:
    state_dir, token = clinic
    client = logged_in(TestClient(create_dashboard(ClinicSite(state_dir))), token)
    page = client.get("/")
    assert page.status_code == 200
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        budget = ledger.budget("clinic-01")
        history = ledger.history("clinic-01")
    row = re.search(r'<tr data-dataset="clinic-01">(.*?)</tr>', page.text, re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    assert cells == [
        "clinic-01",
        f"{budget.spent:.4g}",
        f"{budget.remaining:.4g}",
        "5",
        "1e-05",
        "pld",
        "2",
    ]
    receipts = re.findall(r'<td class="epsilon-after">([^<]+)</td>', page.text)
    assert receipts == [f"{c.epsilon_after:.4g}" for c in reversed(history)]  # newest first
    head = verify_target(state_dir=state_dir).result.head_hash
    assert "Verifies" in page.text and head in page.text
    refusals = re.search(r'<table id="refusal-table">(.*?)</table>', page.text, re.S)
    assert refusals is not None and "run-b" in refusals.group(1)
    chart = client.get("/charts/budget/clinic-01.svg")
    assert chart.headers["content-type"] == "image/svg+xml" and b"<svg" in chart.content
    assert client.get("/charts/budget/nobody.svg").status_code == 404
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    assert "script" not in page.text.lower()


def test_a_tampered_ledger_is_shown_failing(clinic: tuple[Path, str], tmp_path: Path) -> None:
    state_dir, token = clinic
    copy = tmp_path / "copy"
    shutil.copytree(state_dir, copy)
    with sqlite3.connect(copy / "ledger.db") as connection:
        connection.execute("UPDATE ledger_charges SET epsilon_after = 0.01 WHERE id = 2")
    client = logged_in(TestClient(create_dashboard(ClinicSite(copy))), token)
    page = client.get("/")
    assert "FAILS verification" in page.text and 'id="audit-failures"' in page.text
    assert "do not rely on them" in page.text


def test_nothing_is_shown_without_a_session(clinic: tuple[Path, str]) -> None:
    state_dir, token = clinic
    client = TestClient(create_dashboard(ClinicSite(state_dir)))
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"] == "/login"
    assert client.get("/charts/budget/clinic-01.svg").status_code == 401
    form = client.get("/login")
    wrong = client.post("/login", data={"csrf": csrf_of(form.text), "token": token + "x"})
    assert wrong.status_code == 401 and "unknown or wrong token" in wrong.text
    no_csrf = client.post("/login", data={"token": token})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    client.cookies.set("oralfed_session", "0123456789abcdef.99999999999.forged")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_form_from_another_origin_is_refused(clinic: tuple[Path, str]) -> None:
    state_dir, token = clinic
    client = logged_in(TestClient(create_dashboard(ClinicSite(state_dir))), token)
    csrf = csrf_of(client.get("/").text)
    foreign = client.post("/logout", data={"csrf": csrf}, headers={"origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert client.post("/logout", data={"csrf": "forged"}).status_code == 403
    out = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and client.get("/", follow_redirects=False).status_code == 303


def test_a_removed_token_ends_its_sessions(clinic: tuple[Path, str], tmp_path: Path) -> None:
    state_dir, _ = clinic
    copy = tmp_path / "copy"
    shutil.copytree(state_dir, copy)
    token = create_clinic_token(copy, "temporary")
    client = logged_in(TestClient(create_dashboard(ClinicSite(copy))), token)
    (copy / DASHBOARD_TOKENS_FILE).unlink()
    assert client.get("/", follow_redirects=False).status_code == 303


def test_token_files_hold_no_secret_and_refuse_duplicates(clinic, tmp_path: Path) -> None:
    token = create_clinic_token(tmp_path, "officer")
    secret = token.partition(".")[2]
    assert secret not in (tmp_path / DASHBOARD_TOKENS_FILE).read_text()
    with pytest.raises(DashboardTokenError, match="has a token"):
        create_clinic_token(tmp_path, "officer")
    (tmp_path / DASHBOARD_TOKENS_FILE).write_text('{"x": {"name": 1}}')
    client = TestClient(create_dashboard(ClinicSite(tmp_path)))
    form = client.get("/login")
    broken = client.post("/login", data={"csrf": csrf_of(form.text), "token": token})
    assert broken.status_code < 500 and "Traceback" not in broken.text


def run_folder(folder: Path, run_id: str, clinics: list[str], auc: float) -> Path:
    """A run folder as the ServerApp leaves it: run and round records, and its signed log
    with the clinics' reported ε."""
    folder.mkdir(parents=True)
    store = CoordinatorStore.sqlite_file(folder / "coordinator.db")
    store.start_run(run_id, {"rounds": 1, "secure_aggregation": False})
    results = [
        ClinicResult(
            clinic,
            "train",
            "ok",
            {"num-examples": 100.0, "epsilon-spent": 1.5, "epsilon-cap": 5.0, "delta": 1e-5},
            accountant="pld",
        )
        for clinic in clinics
    ]
    record = RoundRecord(1, results)
    store.record_round(run_id, record)
    with store.engine.begin() as connection:  # the evaluation estimate the rounds recorded
        connection.exec_driver_sql(
            "UPDATE coordinator_rounds SET summary = json_set(summary, '$.eval_auc', ?)", (auc,)
        )
    store.finish_run(run_id, "completed")
    log = AuditLog(store.engine, load_or_create_signing_key(folder))
    log.append(
        ROUND_COMPLETED,
        {
            "run_id": run_id,
            "round": 1,
            "clinics": [{**vars(r), "clinic_id": r.clinic_id} for r in results],
        },
    )
    store.close()
    return folder


@pytest.fixture
def coordinator(tmp_path: Path) -> tuple[CoordinatorSite, str]:
    runs = tmp_path / "runs"
    run_folder(runs / "run-1", "r1", ["clinic-01", "clinic-02"], 0.71)
    run_folder(runs / "run-2", "r2", ["clinic-01"], 0.74)
    store = CoordinatorStore.sqlite_file(tmp_path / "coordinator.db")
    token = create_token(store, "researcher", 2.0)
    return CoordinatorSite(runs, store), token


def test_the_coordinator_page_lists_runs_budgets_and_verification(coordinator) -> None:
    site, token = coordinator
    client = logged_in(TestClient(create_dashboard(site)), token)
    page = client.get("/")
    assert page.status_code == 200
    assert re.findall(r'<tr data-run="([^"]+)">', page.text) == ["run-2", "run-1"]
    assert page.text.count("verifies") >= 2
    assert "researcher: ε 0 of 2 spent" in page.text
    assert "Ask a query" not in page.text  # read-only by default
    assert client.get("/query").status_code == 403
    run = client.get("/runs/run-1")
    assert run.status_code == 200 and 'data-round="1"' in run.text and "0.710" in run.text
    assert client.get("/runs/nothing").status_code == 404
    assert b"<svg" in client.get("/charts/auc/run-1.svg").content


def test_an_edited_coordinator_log_is_shown_failing(coordinator) -> None:
    site, token = coordinator
    with sqlite3.connect(site.runs / "run-1" / "coordinator.db") as connection:
        connection.execute("UPDATE audit_log SET payload = replace(payload, '1.5', '0.1')")
    client = logged_in(TestClient(create_dashboard(site)), token)
    row = re.search(r'<tr data-run="run-1">(.*?)</tr>', client.get("/").text, re.S)
    assert row is not None and "FAILS" in row.group(1)


def test_every_request_is_logged_with_who_made_it(clinic, caplog) -> None:
    state_dir, token = clinic
    client = logged_in(TestClient(create_dashboard(ClinicSite(state_dir))), token)
    with caplog.at_level("INFO", logger="oralfed.dashboard"):
        client.get("/")
    assert any("officer GET / -> 200" in record.getMessage() for record in caplog.records)


def test_the_clinics_of_a_federation_folder_are_listed_with_their_keys(
    coordinator, tmp_path: Path
) -> None:
    site, token = coordinator
    federation = tmp_path / "federation"
    init_federation("test", federation)
    entries = [add_clinic(federation, name) for name in ("clinic-01", "clinic-02", "clinic-09")]
    client = logged_in(
        TestClient(create_dashboard(replace(site, federation_dir=federation))), token
    )
    page = client.get("/").text
    for entry in entries:
        row = re.search(rf'<tr data-clinic="{entry.name}">(.*?)</tr>', page, re.S)
        assert row is not None and entry.fingerprint in row.group(1)
    newest = re.search(r'<tr data-clinic="clinic-01">(.*?)</tr>', page, re.S)
    assert newest is not None and "trained in run-2 round 1" in newest.group(1)
    never = re.search(r'<tr data-clinic="clinic-09">(.*?)</tr>', page, re.S)
    assert never is not None and "never" in never.group(1)


@pytest.fixture
def asking(tmp_path: Path, coordinator, write_csv) -> tuple[TestClient, list[ClinicNode]]:
    """The coordinator's dashboard with the query form over two real clinics, logged in."""
    site, token = coordinator
    clinics = [
        ClinicNode(name, write_csv(good_rows(150), name=f"{name}.csv"), tmp_path / name, name)
        for name in ("north", "south")
    ]
    queries = CappedQueries(
        site.store,
        lambda spec, policy, who: answer_in_process(clinics, spec, policy, who),
        str(site.store.engine.url),
        SuppressionPolicy(),
    )
    client = logged_in(TestClient(create_dashboard(replace(site, queries=queries))), token)
    return client, clinics


def test_a_query_is_estimated_then_sent_and_charged_once(asking) -> None:
    client, clinics = asking
    form = {"measure": "count", "epsilon": "0.5", "csrf": csrf_of(client.get("/query").text)}
    estimate = client.post("/query", data={**form, "action": "estimate"})
    assert estimate.status_code == 200 and 'id="send"' in estimate.text
    assert not any((c.state_dir / "ledger.db").exists() for c in clinics)  # nothing asked yet
    after = re.search(r'id="estimate-after">([^<]+)<', estimate.text)
    assert after is not None
    sent = client.post("/query", data={**form, "action": "send"})
    assert sent.status_code == 200 and 'id="answer-table"' in sent.text
    charged = re.search(r"now ε ([0-9.]+) of 2", sent.text)
    assert charged is not None and float(charged.group(1)) <= float(after.group(1)) * 1.001
    over = client.post("/query", data={**form, "epsilon": "2", "action": "send"})
    assert over.status_code == 409 and "Nothing was spent" in over.text
    assert f"researcher: ε {charged.group(1)} of 2 spent" in client.get("/").text  # unchanged


FORM = {"content-type": "application/x-www-form-urlencoded"}
_FIELDS = st.sampled_from(
    ["measure", "column", "value", "group_by", "epsilon", "delta", "mechanism", "bins",
     "quantiles", "action", "csrf", "token", "x" * 300]
)  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=st.lists(st.tuples(_FIELDS, st.text(max_size=40)), max_size=12),
    raw=st.binary(max_size=200),
    keep_csrf=st.booleans(),
)
def test_no_form_however_hostile_gets_a_server_error(asking, fields, raw, keep_csrf) -> None:
    client, _ = asking
    csrf = csrf_of(client.get("/query").text)
    data = [(name, value) for name, value in fields if name != "action"] + [("action", "estimate")]
    if keep_csrf:
        data.append(("csrf", csrf))
    for path in ("/query", "/login"):
        response = client.post(path, content=urlencode(data), headers=FORM, follow_redirects=False)
        assert response.status_code < 500, (path, data, response.text[:300])
        raw_response = client.post(path, content=raw, headers=FORM, follow_redirects=False)
        assert raw_response.status_code < 500 and "Traceback" not in raw_response.text


def test_guessing_tokens_is_throttled(clinic: tuple[Path, str]) -> None:
    state_dir, token = clinic
    client = TestClient(create_dashboard(ClinicSite(state_dir)))
    csrf = csrf_of(client.get("/login").text)
    for _ in range(10):
        guess = client.post("/login", data={"csrf": csrf, "token": "ofd_0123456789abcdef.guess"})
        assert guess.status_code == 401
    refused = client.post("/login", data={"csrf": csrf, "token": token})
    assert refused.status_code == 429 and "too many failed logins" in refused.text


def test_the_throttle_forgets_old_failures() -> None:
    throttle = LoginThrottle(limit=2, window=60)
    throttle.failed("a", now=0)
    throttle.failed("a", now=10)
    assert throttle.wait("a", now=20) == pytest.approx(40) and throttle.wait("b", now=20) == 0
    assert throttle.wait("a", now=61) == 0


def test_a_changed_file_is_shown_pending_until_its_view_is_rebuilt(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_text("1")
    views: FileSnapshots[str] = FileSnapshots()
    release = threading.Event()

    def build() -> str:
        text = source.read_text()
        if text != "1":
            release.wait(10)  # a slow rebuild, as verifying a long log is
        return text

    first = views.latest("k", [source], build)
    assert (first.view, first.pending) == ("1", False)
    source.write_text("22")
    stale = views.latest("k", [source], build)
    assert (stale.view, stale.pending, stale.built_at) == ("1", True, first.built_at)
    release.set()
    deadline = time.monotonic() + 10
    while (now := views.latest("k", [source], build)).pending:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert now.view == "22"


def test_the_watcher_verifies_a_new_charge_before_anyone_asks(clinic, tmp_path: Path) -> None:
    state_dir, token = clinic
    copy = tmp_path / "copy"
    shutil.copytree(state_dir, copy)
    with TestClient(create_dashboard(ClinicSite(copy))) as client:  # the watcher runs
        logged_in(client, token)
        assert "2 charges, newest first" in client.get("/").text
        with PrivacyLedger.in_state_dir(copy) as ledger:
            ledger.charge("clinic-01", ROUND, run_id="run-c", round=1)
        time.sleep(8)  # no request meanwhile: only the watcher can have rebuilt the view
        page = client.get("/").text
        assert "3 charges, newest first" in page
        assert 'id="pending"' not in page and "run-c" in page
