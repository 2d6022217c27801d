"""End to end: one aggregate query over a real Flower simulation of 3 clinics.

Kept to a single simulated query (Ray is heavy on a shared 2-core machine); everything
else about queries is tested in-process in tests/server/test_insights*.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oralfed.privacy.events import DiscreteGaussianEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.server.coordinator_db import CoordinatorStore

pytestmark = pytest.mark.e2e


def test_a_query_runs_through_the_simulated_federation(tmp_path: Path) -> None:
    out = tmp_path / "query"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "oralfed.cli",
            "insights",
            "query",
            "--measure",
            "proportion",
            "--column",
            "untreated_caries",
            "--group-by",
            "smoking_status",
            "--epsilon",
            "1",
            "--clinics",
            "3",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    answer = json.loads(completed.stdout[completed.stdout.index("{") :])
    assert sorted(p["clinic"] for p in answer["participants"]) == [
        "clinic-01",
        "clinic-02",
        "clinic-03",
    ]
    assert answer["refusals"] == []
    cells = {c["group"]["smoking_status"]: c for c in answer["cells"]}
    assert set(cells) == {"never", "former", "current"}
    never, current = cells["never"]["value"], cells["current"]["value"]
    assert current["value"] > never["value"]  # smokers have more untreated caries
    for name in ("clinic-01", "clinic-02", "clinic-03"):
        with PrivacyLedger.in_state_dir(out / "state" / name) as ledger:
            [charge] = ledger.history(name)
        assert isinstance(charge.event, DiscreteGaussianEvent) and charge.event.count == 2
    store = CoordinatorStore(f"sqlite:///{out / 'coordinator.db'}")
    [row] = store.queries()
    store.close()
    assert row.query_id == answer["query_id"]
