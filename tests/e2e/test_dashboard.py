"""End to end: ``oralfed dashboard serve`` processes over a real simulated federation, driven
in a real headless browser (Debian's chromium through its chromedriver, with Selenium).

The privacy officer logs in and reads the clinic's budget table and chart against the
ledger's own figures; a tampered audit log is shown failing; a researcher asks a query and sees
its answer, its intervals and its cost deducted from the token; a visitor without a token
sees nothing. A screenshot of each page is kept in ``build/test-artifacts/dashboard``.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from oralfed.privacy.audit_targets import verify_target
from oralfed.privacy.ledger import PrivacyLedger
from tests.e2e.conftest import ORALFED, free_port, oralfed, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "dashboard"
webdriver = pytest.importorskip("selenium.webdriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.expected_conditions import staleness_of  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

PAGE_SECONDS = 60


@dataclass
class Dashboards:
    root: Path
    run: Path
    clinic_state: Path
    officer_token: str
    researcher_token: str
    clinic_url: str
    coordinator_url: str
    coordinator_db: Path
    processes: list[subprocess.Popen[bytes]]

    def serve(self, *arguments: str | Path) -> str:
        """Start one more dashboard process; its URL once it accepts connections."""
        port = free_port()
        log = (self.root / f"dashboard-{port}.out").open("ab")
        process = subprocess.Popen(
            [*ORALFED, "dashboard", "serve", *map(str, arguments), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        wait_for(lambda: _accepts(port) or process.poll() is not None, 60, "the dashboard")
        assert process.poll() is None, (self.root / f"dashboard-{port}.out").read_text()
        return f"http://127.0.0.1:{port}"


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def dashboards(
    federation: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboards]:
    """Dashboards over the session's simulated federation (``tests/e2e/conftest.py``): the
    clinic mode over clinic-01's state, the coordinator mode over its run folders."""
    root = tmp_path_factory.mktemp("dashboard")
    run = federation["root"] / "run1"
    clinic_state = federation["root"] / "state" / "clinic-01"
    officer = oralfed(
        "dashboard", "token", "create", "--state-dir", clinic_state, "--name", "officer"
    )
    coordinator_db = root / "coordinator.db"
    researcher = oralfed(
        "insights", "token", "create", "--name", "researcher", "--epsilon-cap", "3",
        "--coordinator-db", coordinator_db,
    )  # fmt: skip
    found = Dashboards(
        root,
        run,
        clinic_state,
        officer.stdout.strip().splitlines()[-1],
        researcher.stdout.strip().splitlines()[-1],
        "",
        "",
        coordinator_db,
        [],
    )
    try:
        found.clinic_url = found.serve("--state-dir", clinic_state)
        found.coordinator_url = found.serve(
            "--runs", federation["root"], "--coordinator-db", coordinator_db, "--allow-queries",
            "--clinics", "3", "--out", root / "query-clinics",
        )  # fmt: skip
        yield found
    finally:
        for process in found.processes:
            process.terminate()
            process.wait(timeout=20)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1280,2000", f"--user-data-dir={tmp_path / 'chromium'}",
    ):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(120)
    # A form post or a link replaces the page while the test goes on: look up elements for a
    # while rather than failing on the old page or on a new one still loading.
    driver.implicitly_wait(PAGE_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


def follow(driver: Any, element: Any) -> None:
    """Click a submit button or a link and wait until its page has been replaced, so that
    what the test reads next is the answer's page, never the page it came from."""
    element.click()
    # Asked about the element while its page is being replaced, Chromium may answer with an
    # inspector error instead of "stale": ask again until the old page is gone.
    WebDriverWait(driver, PAGE_SECONDS, ignored_exceptions=(WebDriverException,)).until(
        staleness_of(element)
    )


def log_in(driver: Any, url: str, token: str) -> None:
    driver.get(url + "/")
    assert driver.current_url.endswith("/login")
    driver.find_element(By.ID, "token").send_keys(token)
    follow(driver, driver.find_element(By.ID, "login-submit"))


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def cells(driver: Any, row_selector: str) -> list[str]:
    row = driver.find_element(By.CSS_SELECTOR, row_selector)
    return [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]


def test_the_officer_reads_the_budget_table_and_chart_against_the_ledger(
    dashboards: Dashboards, browser: Any
) -> None:
    log_in(browser, dashboards.clinic_url, dashboards.officer_token)
    with PrivacyLedger.in_state_dir(dashboards.clinic_state) as ledger:
        budget = ledger.budget("clinic-01")
        charges = ledger.history("clinic-01")
    row = cells(browser, 'tr[data-dataset="clinic-01"]')
    assert row[:7] == [
        "clinic-01", f"{budget.spent:.4g}", f"{budget.remaining:.4g}",
        f"{budget.epsilon_cap:.4g}", f"{budget.delta:g}", budget.accountant, str(len(charges)),
    ]  # fmt: skip
    chart = browser.find_element(By.ID, "chart-clinic-01")
    assert int(chart.get_property("naturalWidth")) > 0  # the SVG loaded and rendered
    assert f"{budget.spent:.4g} of {budget.epsilon_cap:.4g}" in chart.get_attribute("alt")
    receipts = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "td.epsilon-after")]
    assert receipts == [f"{c.epsilon_after:.4g}" for c in reversed(charges)]
    status = browser.find_element(By.ID, "audit-status").text
    head = browser.find_element(By.ID, "head-hash").text
    assert (
        status.startswith("Verifies")
        and head == verify_target(state_dir=dashboards.clinic_state).result.head_hash
    )
    policy = browser.find_element(By.ID, "policy-table").text
    assert "max_epsilon_per_run" in policy
    header, *rows = (dashboards.run.parent / "data" / "clinic-01.csv").read_text().splitlines()
    imported = cells(browser, "#import-table tbody tr")
    assert imported[1] == "clinic-01" and imported[3] == str(len(rows))  # counts only
    screenshot(browser, "clinic")
    # No patient-level value anywhere: none of the clinic's patient references is on it.
    page = browser.page_source
    column = header.split(",").index("patient_ref")
    references = [row.split(",")[column] for row in rows]
    assert references and not [ref for ref in references if ref in page]


def test_a_tampered_audit_log_is_shown_failing(dashboards: Dashboards, browser: Any) -> None:
    copy = dashboards.root / "tampered-clinic-01"
    shutil.copytree(dashboards.clinic_state, copy)
    with sqlite3.connect(copy / "ledger.db") as connection:  # an insider rewrites history
        connection.execute(
            "UPDATE audit_log SET recorded_at = '2020-01-01T00:00:00+00:00' WHERE seq = 2"
        )
    url = dashboards.serve("--state-dir", copy)
    log_in(browser, url, dashboards.officer_token)
    status = browser.find_element(By.ID, "audit-status").text
    assert status.startswith("FAILS verification")
    failures = browser.find_element(By.ID, "audit-failures").text
    assert "changed" in failures and "its content no longer matches its hash" in failures
    screenshot(browser, "clinic-edited")


def test_a_researcher_asks_a_query_and_sees_its_cost_deducted(
    dashboards: Dashboards, browser: Any
) -> None:
    log_in(browser, dashboards.coordinator_url, dashboards.researcher_token)
    run = cells(browser, 'tr[data-run="run1"]')
    assert run[1] == "completed" and run[3] == "2" and run[6] == "verifies"
    screenshot(browser, "coordinator")
    follow(browser, browser.find_element(By.LINK_TEXT, "run1"))
    assert browser.find_element(By.ID, "run-status").text == "completed"
    auc = browser.find_element(By.ID, "auc-chart")
    assert int(auc.get_property("naturalWidth")) > 0
    screenshot(browser, "run")
    browser.get(dashboards.coordinator_url + "/query")
    browser.find_element(By.CSS_SELECTOR, '#measure option[value="mean"]').click()
    browser.find_element(By.CSS_SELECTOR, '#column option[value="sugary_drinks_per_day"]').click()
    browser.find_element(By.CSS_SELECTOR, 'input[name="group_by"][value="sex"]').click()
    browser.find_element(By.ID, "epsilon").send_keys("0.5")
    follow(browser, browser.find_element(By.ID, "estimate"))
    estimate = float(browser.find_element(By.ID, "estimate-after").text)
    assert 0 < estimate <= 3
    screenshot(browser, "query-estimate")
    follow(browser, browser.find_element(By.ID, "send"))
    answer = browser.find_element(By.ID, "answer-table").text
    assert "sex=" in answer and "[" in answer  # cells with their 95 % intervals
    assert int(browser.find_element(By.ID, "answer-chart").get_property("naturalWidth")) > 0
    screenshot(browser, "query-answer")
    request = urllib.request.Request(
        dashboards.coordinator_url + "/api/v1/token",
        headers={"Authorization": f"Bearer {dashboards.researcher_token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # the API's own figure
        spent = json.loads(response.read())["epsilon_spent"]
    assert 0 < spent <= estimate * (1 + 1e-3)  # the page shows four digits
    charged = browser.find_element(By.ID, "charged").text
    assert f"now ε {spent:.4g} of 3" in charged
    browser.get(dashboards.coordinator_url + "/")
    assert browser.find_elements(By.CSS_SELECTOR, "#query-table tr[data-query]")


def test_without_a_token_nothing_is_shown(dashboards: Dashboards, browser: Any) -> None:
    browser.get(dashboards.coordinator_url + "/runs/run1")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "token").send_keys("ofi_0123456789abcdef.wrong")
    follow(browser, browser.find_element(By.ID, "login-submit"))
    assert "unknown or wrong token" in browser.find_element(By.ID, "login-problem").text
    screenshot(browser, "login-refused")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(dashboards.coordinator_url + "/charts/auc/run1.svg", timeout=30)
    assert refused.value.code == 401
    with urllib.request.urlopen(dashboards.coordinator_url + "/query", timeout=30) as page:
        assert page.url.endswith("/login")  # redirected: nothing of the form is served
    form = urllib.request.Request(
        dashboards.coordinator_url + "/query", data=b"measure=count&epsilon=1", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(form, timeout=30)
    assert refused.value.code == 401
