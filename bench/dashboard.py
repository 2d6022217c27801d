"""How fast the dashboard's pages render as history grows: 10,000 ledger entries, 100 runs.

Builds, with the library's own writers, a clinic state dir whose ledger holds 10 data sets
of 1,000 charges each (every one charged through ``PrivacyLedger.charge`` with its signed
audit entry, under the RDP accountant so the history can be written in a minute; a PLD
ledger's recomputation on the page is one composition of the merged history either way),
and a runs folder of 100 run folders (copies of one 5-round, 5-clinic run written with the
coordinator's store and signed log). Then times each page through the application in
process (FastAPI's test client, logged in): the first request after start (cold: the log
verified, ε recomputed, the views built) and the median of later ones (warm: the files
unchanged, the views reused), and once more after one new charge (the view rebuilt).

    python bench/dashboard.py [--write-doc]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from bench.benchmarks_doc import machine_description, replace_section  # noqa: E402
from oralfed.deploy.dashboard import (  # noqa: E402
    ClinicSite,
    CoordinatorSite,
    create_clinic_token,
    create_dashboard,
)
from oralfed.privacy.audit_log import ROUND_COMPLETED, AuditLog  # noqa: E402
from oralfed.privacy.events import DpSgdEvent  # noqa: E402
from oralfed.privacy.keys import load_or_create_signing_key  # noqa: E402
from oralfed.privacy.ledger import PrivacyLedger  # noqa: E402
from oralfed.server.coordinator_db import CoordinatorStore  # noqa: E402
from oralfed.server.history import ClinicResult, RoundRecord  # noqa: E402
from oralfed.server.insights_api import create_token  # noqa: E402

DATASETS, CHARGES, RUNS, ROUNDS, CLINICS = 10, 1_000, 100, 5, 5
EVENT = DpSgdEvent(noise_multiplier=8.0, sample_rate=0.01, steps=10)
WARM_REPEATS = 5


def build_clinic(state_dir: Path) -> None:
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        for dataset in range(DATASETS):
            name = f"dataset-{dataset:02d}"
            ledger.ensure_dataset(name, epsilon_cap=1e6, delta=1e-6, accountant="rdp")
            for charge in range(CHARGES):
                ledger.charge(name, EVENT, run_id=f"run-{charge // ROUNDS}", round=charge % 5 + 1)


def build_runs(runs: Path) -> None:
    template = runs / "run-000"
    template.mkdir(parents=True)
    store = CoordinatorStore.sqlite_file(template / "coordinator.db")
    store.start_run("run-000", {"rounds": ROUNDS, "secure_aggregation": False})
    log = AuditLog(store.engine, load_or_create_signing_key(template))
    for number in range(1, ROUNDS + 1):
        results = [
            ClinicResult(
                f"clinic-{clinic:02d}",
                "train",
                "ok",
                {"num-examples": 500.0, "epsilon-spent": 0.4 * number, "epsilon-cap": 10.0,
                 "delta": 1e-6},
                accountant="pld",
            )
            for clinic in range(CLINICS)
        ]  # fmt: skip
        store.record_round("run-000", RoundRecord(number, results))
        log.append(
            ROUND_COMPLETED,
            {"run_id": "run-000", "round": number, "clinics": [vars(r) for r in results]},
        )
    store.finish_run("run-000", "completed")
    store.close()
    for copy in range(1, RUNS):
        shutil.copytree(template, runs / f"run-{copy:03d}")


def logged_in(client: TestClient, token: str) -> TestClient:
    """Logged in without following the login's redirect, so no page is built before the
    first one timed."""
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert found is not None
    answer = client.post(
        "/login", data={"csrf": found.group(1), "token": token}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return client


def timed(fetch: Callable[[], object]) -> float:
    started = time.perf_counter()
    response = fetch()
    elapsed = time.perf_counter() - started
    assert getattr(response, "status_code", 200) == 200, response
    return elapsed


def page_times(client: TestClient, path: str) -> tuple[float, float]:
    """(cold, warm median) seconds of GET ``path``; the first call is the cold one."""
    cold = timed(lambda: client.get(path))
    warm = statistics.median(timed(lambda: client.get(path)) for _ in range(WARM_REPEATS))
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        clinic, runs = root / "clinic", root / "runs"
        clinic.mkdir()
        build = time.perf_counter()
        build_clinic(clinic)
        build_runs(runs)
        build_seconds = time.perf_counter() - build
        rows: list[tuple[str, float, float]] = []

        token = create_clinic_token(clinic, "officer")
        client = logged_in(TestClient(create_dashboard(ClinicSite(clinic))), token)
        total = DATASETS * CHARGES
        rows.append((f"clinic: overview ({total:,} charges, 100 a page)", *page_times(client, "/")))
        rows.append(("clinic: charges, the middle page", *page_times(client, "/?page_number=50")))
        chart = "/charts/budget/dataset-00.svg"
        rows.append((f"clinic: ε chart of {CHARGES:,} charges", *page_times(client, chart)))
        with PrivacyLedger.in_state_dir(clinic) as ledger:
            ledger.charge("dataset-00", EVENT, run_id="one-more", round=1)
        changed = time.perf_counter()
        rows.append(("clinic: overview just after one more charge", *page_times(client, "/")))
        while 'id="pending"' in client.get("/").text:
            time.sleep(0.05)
        rebuilt = time.perf_counter() - changed

        store = CoordinatorStore.sqlite_file(root / "coordinator.db")
        token = create_token(store, "researcher", 1.0)
        client = logged_in(TestClient(create_dashboard(CoordinatorSite(runs, store))), token)
        rows.append((f"coordinator: overview ({RUNS} runs)", *page_times(client, "/")))
        middle = f"run-{RUNS // 2:03d}"
        rows.append(("coordinator: one run's rounds", *page_times(client, f"/runs/{middle}")))
        rows.append(("coordinator: AUC chart", *page_times(client, f"/charts/auc/{middle}.svg")))
    wall = time.perf_counter() - started
    table = "\n".join(
        f"| {name} | {cold * 1000:.0f} | {warm * 1000:.0f} |" for name, cold, warm in rows
    )
    body = f"""## Dashboard: pages over a long history (bench/dashboard.py)

Command: `python bench/dashboard.py`{"  "}
Machine: {machine_description()}; wall time {wall:.0f} s ({build_seconds:.0f} s of it writing the
history); one run, in process through FastAPI's test client, logged in.

History: a clinic ledger of {DATASETS * CHARGES:,} charges ({DATASETS} data sets of {CHARGES:,},
each charged through the ledger with its signed audit entry) and {RUNS} run folders of
{ROUNDS} rounds and {CLINICS} clinics each.

| page | first request (ms) | later requests, median of {WARM_REPEATS} (ms) |
|---|---|---|
{table}

The first request of a process builds the view: it verifies the whole signed log (every
entry's hash and signature, and the ledger's rows against it), recomputes each data set's
ε from its history and reads every charge. Later requests reuse the view as long as the
databases' files are unchanged. After a new charge, pages are served at once from the
last verified view, marked as pending, while the view is rebuilt in the background (the
served dashboard's watcher starts that within a second of the change, without a request):
here the new charge was verified and shown {rebuilt:.1f} s after it was written (signatures
verified before are not verified again). The charges table shows 100 rows a page.
"""
    print(body)
    if args.write_doc:
        replace_section("dashboard", body)


if __name__ == "__main__":
    main()
